//! Property tests: whatever the policy and the filter, a granted
//! subscription never matches a topic the policy does not allow the
//! principal to receive, and containment and overlap agree with matching.

use proptest::prelude::*;

use super::*;

/// Levels from a small alphabet, so that random filters and topics meet.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just(String::new()),
        Just("$SYS".to_owned()),
        Just("dev".to_owned()),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(literal(), 1..5).prop_map(|levels| levels.join("/"))
}

fn filter_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![
                literal(),
                Just("+".to_owned()),
                Just("${CommonName}".to_owned())
            ],
            1..5,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
}

fn concrete_filter() -> impl Strategy<Value = Filter> {
    filter_text().prop_filter_map("valid", |t| {
        Filter::parse(&t.replace("${CommonName}", "dev")).ok()
    })
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec(
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            filter_text().prop_filter_map("a valid pattern", |t| Pattern::parse(&t).ok()),
        )
            .prop_map(|(deny, publish, subscribe, pattern)| Rule {
                effect: if deny { Effect::Deny } else { Effect::Allow },
                publish,
                subscribe,
                patterns: vec![pattern],
            }),
        0..6,
    )
}

fn principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        Just("dev"),
        Just("a"),
        Just("#"),
        Just("+"),
        Just("x/y"),
        Just("")
    ]
    .prop_map(|cn| Principal {
        common_name: cn.to_owned(),
        ..Default::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_granted_filter_never_matches_a_denied_topic(
        rules in rules(), who in principal(), filter in concrete_filter(), topics in prop::collection::vec(topic(), 1..20)
    ) {
        let policy = Policy { name: "p".into(), rules };
        let grants = Grants::new([&policy], &who);
        if grants.subscribe(&filter).is_allowed() {
            for topic in topics.iter().filter(|t| filter.matches(t)) {
                prop_assert!(grants.receive(topic), "{filter} granted but {topic} is not allowed");
            }
        }
    }

    #[test]
    fn containment_implies_matching(a in concrete_filter(), b in concrete_filter(), topics in prop::collection::vec(topic(), 1..20)) {
        if a.contains(&b) {
            for topic in topics.iter().filter(|t| b.matches(t)) {
                prop_assert!(a.matches(topic), "{a} contains {b} but misses {topic}");
            }
        }
        // Both matching one topic means they overlap.
        if topics.iter().any(|t| a.matches(t) && b.matches(t)) {
            prop_assert!(a.overlaps(&b), "{a} and {b} share a topic but do not overlap");
        }
    }
}
