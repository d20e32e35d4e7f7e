//! The cost of a topic authorization decision on the message path: a
//! device with 10 applicable rules (allows and denies, with variables),
//! deciding a PUBLISH topic and a SUBSCRIBE filter; and making a
//! connection's grants at CONNECT.
//!
//! `cargo bench --bench authz`. Results go in docs/BENCHMARKS.md.

use std::hint::black_box;

use certmq::authz::{Effect, Filter, Grants, Pattern, Policy, Principal, Rule};
use criterion::{Criterion, criterion_group, criterion_main};

fn rule(effect: Effect, publish: bool, subscribe: bool, pattern: &str) -> Rule {
    Rule {
        effect,
        publish,
        subscribe,
        patterns: vec![Pattern::parse(pattern).unwrap()],
    }
}

/// Ten rules, the decisive ones last.
fn policy() -> Policy {
    let mut rules = Vec::new();
    for i in 0..4 {
        rules.push(rule(
            Effect::Deny,
            true,
            true,
            &format!("quarantine/{i}/${{DeviceSn}}/#"),
        ));
    }
    for i in 0..4 {
        rules.push(rule(
            Effect::Allow,
            true,
            true,
            &format!("fleet/{i}/${{Subject.O}}/+/status"),
        ));
    }
    rules.push(rule(
        Effect::Deny,
        false,
        true,
        "devices/${CommonName}/secrets/#",
    ));
    rules.push(rule(Effect::Allow, true, true, "devices/${CommonName}/#"));
    Policy {
        name: "bench".into(),
        rules,
    }
}

fn principal() -> Principal {
    Principal {
        common_name: "sensor-000042".into(),
        device_sn: "5FC9F1DB0A".into(),
        ca_sn: "2B220B4E11".into(),
        client_id: "sensor-000042".into(),
        subject_o: "Acme".into(),
        subject_ou: "east".into(),
    }
}

fn bench_authz(c: &mut Criterion) {
    let policy = policy();
    let who = principal();
    let grants = Grants::new([&policy], &who);
    let topic = "devices/sensor-000042/telemetry/temperature";
    assert!(grants.publish(topic).is_allowed());
    c.bench_function(
        "authz publish decision (10 rules, allowed by the last)",
        |b| b.iter(|| black_box(grants.publish(black_box(topic)))),
    );
    c.bench_function("authz publish decision (10 rules, no rule matches)", |b| {
        b.iter(|| black_box(grants.publish(black_box("devices/other/cmd"))))
    });
    let filter = Filter::parse("devices/sensor-000042/cmd/#").unwrap();
    assert!(grants.subscribe(&filter).is_allowed());
    c.bench_function("authz subscribe decision (10 rules)", |b| {
        b.iter(|| black_box(grants.subscribe(black_box(&filter))))
    });
    c.bench_function("authz grants at CONNECT (10 rules)", |b| {
        b.iter(|| black_box(Grants::new([&policy], black_box(&who))))
    });
}

criterion_group!(benches, bench_authz);
criterion_main!(benches);
