//! Custom permissions through the admin API (AddCustomAuthPermission and
//! its siblings), against live sessions over real TLS: a change is in
//! force, and applied to the sessions it concerns, when the call answers;
//! it is durable; it combines with the configured policies, deny winning.
//! The official SDK's run of the same calls is in `sdk.rs`.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::authz::{
    fleet_policies, puback_reason, publish_qos1, raw_session, read_packet, suback_codes, subscribe,
};
use crate::support::{self, Ca, Device, TestBroker};

fn device_identity(device: &Device) -> String {
    format!("{}:{}", device.identity.ca_sn, device.identity.device_sn)
}

/// One permission call; `params` after `Action` and `InstanceId`.
async fn call(tb: &TestBroker, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let instance = tb.instance();
    let mut all = vec![("Action", action), ("InstanceId", instance.as_str())];
    all.extend_from_slice(params);
    tb.admin(&all).await
}

async fn ok(tb: &TestBroker, action: &str, params: &[(&str, &str)]) -> Value {
    let (status, body) = call(tb, action, params).await;
    assert_eq!(status, 200, "{action} {params:?}: {body}");
    assert_eq!(
        (body["Code"].as_i64(), body["Success"].as_bool()),
        (Some(200), Some(true)),
        "{body}"
    );
    body
}

async fn online(tb: &TestBroker, client_id: &str) -> bool {
    let instance = tb.instance();
    let (status, body) = tb
        .admin(&[
            ("Action", "QuerySessionByClientId"),
            ("InstanceId", &instance),
            ("ClientId", client_id),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    body["OnlineStatus"].as_bool().unwrap()
}

/// The permissions Query lists, as `IdentityType Identity Topic PermitAction Effect`.
async fn listed(tb: &TestBroker, size: &str, token: &str) -> (Vec<String>, String) {
    let body = ok(
        tb,
        "QueryCustomAuthPermission",
        &[("Size", size), ("NextToken", token)],
    )
    .await;
    let rows = body["Data"]["Results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {}",
                r["IdentityType"].as_str().unwrap(),
                r["Identity"].as_str().unwrap(),
                r["Topic"].as_str().unwrap(),
                r["PermitAction"].as_str().unwrap(),
                r["Effect"].as_str().unwrap()
            )
        })
        .collect();
    (rows, body["Data"]["NextToken"].as_str().unwrap().to_owned())
}

/// Reads until the broker closes the socket; the MQTT 5 DISCONNECT reason
/// it sent first, if any.
async fn closed_with(stream: &mut crate::support::raw::Stream) -> Option<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the broker did not close the session");
    (all.first() == Some(&0xE0)).then(|| all[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_permissions_apply_to_live_sessions_before_the_answer_and_last() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    let d1 = ca.device("d1");
    let d1_identity = device_identity(&d1);
    let mut session = raw_session(&tb, &d1, 5, "d1").await;
    session
        .write_all(&subscribe(5, 1, &["devices/d1/cmd"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut session).await), [0x01]);

    // DENY SUB on its own namespace: the live subscription goes with its
    // session before the call answers.
    ok(
        &tb,
        "AddCustomAuthPermission",
        &[
            ("IdentityType", "DEVICE"),
            ("Identity", &d1_identity),
            ("Topic", "devices/d1/#"),
            ("PermitAction", "SUB"),
            ("Effect", "DENY"),
        ],
    )
    .await;
    assert!(!online(&tb, "d1").await, "the session outlived the answer");
    assert_eq!(closed_with(&mut session).await, Some(0x87));
    let mut session = raw_session(&tb, &d1, 5, "d1").await;
    session
        .write_all(&subscribe(5, 2, &["devices/d1/cmd"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut session).await), [0x87]);
    session
        .write_all(&publish_qos1(5, 3, "devices/d1/telemetry", b"1"))
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&read_packet(&mut session).await),
        0x00,
        "SUB only"
    );

    // An ALLOW for the CA widens what its devices may do, on the live
    // session, without a reconnect; a CLIENT deny narrows it by client id.
    let ca_sn = d1.identity.ca_sn.to_string();
    ok(
        &tb,
        "AddCustomAuthPermission",
        &[
            ("IdentityType", "CA"),
            ("Identity", &ca_sn),
            ("Topic", "fleet/broadcast"),
            ("PermitAction", "PUB_SUB"),
            ("Effect", "ALLOW"),
        ],
    )
    .await;
    ok(
        &tb,
        "AddCustomAuthPermission",
        &[
            ("IdentityType", "CLIENT"),
            ("Identity", "d1"),
            ("Topic", "devices/d1/telemetry"),
            ("PermitAction", "PUB"),
            ("Effect", "DENY"),
        ],
    )
    .await;
    assert!(online(&tb, "d1").await, "nothing it held was taken away");
    session
        .write_all(&subscribe(5, 4, &["fleet/broadcast"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut session).await), [0x01]);
    session
        .write_all(&publish_qos1(5, 5, "devices/d1/telemetry", b"2"))
        .await
        .unwrap();
    assert_eq!(puback_reason(&read_packet(&mut session).await), 0x87);

    // Query: all three, in pages, and filtered.
    let (first, token) = listed(&tb, "2", "").await;
    assert_eq!(first.len(), 2);
    assert!(!token.is_empty());
    let (rest, end) = listed(&tb, "2", &token).await;
    assert_eq!(end, "", "the last page");
    let mut all = [first, rest].concat();
    all.sort();
    let mut expected = vec![
        format!("CA {ca_sn} fleet/broadcast PUB_SUB ALLOW"),
        "CLIENT d1 devices/d1/telemetry PUB DENY".to_owned(),
        format!("DEVICE {d1_identity} devices/d1/# SUB DENY"),
    ];
    expected.sort();
    assert_eq!(all, expected);
    let only = ok(
        &tb,
        "QueryCustomAuthPermission",
        &[("Size", "10"), ("IdentityType", "DEVICE")],
    )
    .await;
    assert_eq!(only["Data"]["Results"].as_array().unwrap().len(), 1);

    // Durable: after a restart, listed and in force.
    drop(session);
    let tb = tb.restart().await;
    let (after, _) = listed(&tb, "100", "").await;
    let mut after = after;
    after.sort();
    assert_eq!(after, expected);
    let mut session = raw_session(&tb, &d1, 5, "d1").await;
    session
        .write_all(&subscribe(5, 6, &["devices/d1/cmd", "fleet/broadcast"]))
        .await
        .unwrap();
    assert_eq!(
        suback_codes(5, &read_packet(&mut session).await),
        [0x87, 0x01]
    );

    // Update turns the deny into an allow; Delete restores the default.
    ok(
        &tb,
        "UpdateCustomAuthPermission",
        &[
            ("IdentityType", "CLIENT"),
            ("Identity", "d1"),
            ("Topic", "devices/d1/telemetry"),
            ("PermitAction", "PUB"),
            ("Effect", "ALLOW"),
        ],
    )
    .await;
    session
        .write_all(&publish_qos1(5, 7, "devices/d1/telemetry", b"3"))
        .await
        .unwrap();
    assert_eq!(puback_reason(&read_packet(&mut session).await), 0x00);
    ok(
        &tb,
        "DeleteCustomAuthPermission",
        &[
            ("IdentityType", "DEVICE"),
            ("Identity", &d1_identity),
            ("Topic", "devices/d1/#"),
        ],
    )
    .await;
    session
        .write_all(&subscribe(5, 8, &["devices/d1/cmd"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut session).await), [0x01]);
    // Deleting the CA's allow takes fleet/broadcast away: the session goes.
    ok(
        &tb,
        "DeleteCustomAuthPermission",
        &[
            ("IdentityType", "CA"),
            ("Identity", &ca_sn),
            ("Topic", "fleet/broadcast"),
        ],
    )
    .await;
    assert!(!online(&tb, "d1").await);
    assert_eq!(closed_with(&mut session).await, Some(0x87));

    // Each change left an audit record naming its permission; queries none.
    let audit =
        std::fs::read_to_string(tb.broker.settings().storage.data_dir.join("audit.jsonl")).unwrap();
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |action: &str| records.iter().filter(|r| r["action"] == action).count();
    assert_eq!(
        (
            count("AddCustomAuthPermission"),
            count("UpdateCustomAuthPermission"),
            count("DeleteCustomAuthPermission"),
            count("QueryCustomAuthPermission")
        ),
        (3, 1, 2, 0),
        "{audit}"
    );
    let add = records
        .iter()
        .find(|r| r["action"] == "AddCustomAuthPermission")
        .unwrap();
    assert_eq!(add["targets"]["Identity"], d1_identity.as_str());
    assert_eq!(add["targets"]["Topic"], "devices/d1/#");
    assert_eq!(add["targets"]["Effect"], "DENY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_permission_calls_are_refused_with_the_reason_and_change_nothing() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    let d1 = ca.device("d1");
    let identity = device_identity(&d1);
    let full = |kind: &'static str, who: &'static str, topic: &'static str| {
        vec![
            ("IdentityType", kind),
            ("Identity", who),
            ("Topic", topic),
            ("PermitAction", "PUB"),
            ("Effect", "ALLOW"),
        ]
    };
    let leaked: &'static str = Box::leak(identity.clone().into_boxed_str());
    for (action, params, needle) in [
        (
            "AddCustomAuthPermission",
            full("USER", "bob", "a"),
            "USER is not supported",
        ),
        (
            "AddCustomAuthPermission",
            full("ROBOT", "x", "a"),
            "CLIENT, DEVICE or CA",
        ),
        (
            "AddCustomAuthPermission",
            full("DEVICE", "0BAD", "a"),
            "<CaSn>:<DeviceSn>",
        ),
        (
            "AddCustomAuthPermission",
            full("CA", "xyz", "a"),
            "hex serial",
        ),
        (
            "AddCustomAuthPermission",
            full("CLIENT", "c", "a/#/b"),
            "Topic",
        ),
        (
            "AddCustomAuthPermission",
            full("CLIENT", "c", "a+"),
            "Topic",
        ),
        (
            "AddCustomAuthPermission",
            vec![
                ("IdentityType", "CLIENT"),
                ("Identity", "c"),
                ("Topic", "a"),
                ("Effect", "ALLOW"),
            ],
            "PermitAction",
        ),
        (
            "AddCustomAuthPermission",
            vec![
                ("IdentityType", "CLIENT"),
                ("Identity", "c"),
                ("Topic", "a"),
                ("PermitAction", "READ"),
                ("Effect", "ALLOW"),
            ],
            "PUB, SUB or PUB_SUB",
        ),
        (
            "AddCustomAuthPermission",
            vec![
                ("IdentityType", "CLIENT"),
                ("Identity", "c"),
                ("Topic", "a"),
                ("PermitAction", "PUB"),
                ("Effect", "MAYBE"),
            ],
            "ALLOW or DENY",
        ),
        (
            "AddCustomAuthPermission",
            vec![("IdentityType", "CLIENT"), ("Topic", "a")],
            "Identity",
        ),
        (
            "UpdateCustomAuthPermission",
            full("DEVICE", leaked, "x"),
            "AddCustomAuthPermission",
        ),
        (
            "DeleteCustomAuthPermission",
            vec![
                ("IdentityType", "CLIENT"),
                ("Identity", "c"),
                ("Topic", "a"),
            ],
            "no custom permission",
        ),
        ("QueryCustomAuthPermission", vec![], "Size"),
        ("QueryCustomAuthPermission", vec![("Size", "0")], "1 to 100"),
        (
            "QueryCustomAuthPermission",
            vec![("Size", "101")],
            "1 to 100",
        ),
        (
            "QueryCustomAuthPermission",
            vec![("Size", "10"), ("NextToken", "not-a-token")],
            "NextToken",
        ),
    ] {
        let (status, body) = call(&tb, action, &params).await;
        assert_eq!(status, 400, "{action} {params:?}: {body}");
        assert_eq!(body["Code"], "ParameterFieldCheckFailed", "{body}");
        let message = body["Message"].as_str().unwrap();
        assert!(message.contains(needle), "{action} {params:?}: {message}");
    }
    // Adding twice: the second is refused, the first stays.
    ok(&tb, "AddCustomAuthPermission", &full("CLIENT", "c", "a")).await;
    let (status, body) = call(&tb, "AddCustomAuthPermission", &full("CLIENT", "c", "a")).await;
    assert_eq!(status, 400);
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("UpdateCustomAuthPermission"),
        "{body}"
    );
    // The instance is checked as for every call.
    let (status, body) = tb
        .admin(&[
            ("Action", "QueryCustomAuthPermission"),
            ("InstanceId", "mqtt-nowhere"),
            ("Size", "10"),
        ])
        .await;
    assert_eq!(
        (status, body["Code"].as_str()),
        (500, Some("MqttInstanceNotFound"))
    );
    let (rows, _) = listed(&tb, "100", "").await;
    assert_eq!(rows, ["CLIENT c a PUB ALLOW"]);
}

/// The answer comes only once every session the change concerns has
/// re-judged: repeated with sessions busy receiving, the denied session is
/// never still online when the call answers, and a session of another
/// device is never touched. (Without the wait in `SessionTable::rejudged`
/// the session is still online after most answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_subscription_never_outlives_the_answer() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    let d1 = ca.device("d1");
    let d2 = ca.device("d2");
    let identity = device_identity(&d1);
    let mut other = raw_session(&tb, &d2, 4, "d2").await;
    other
        .write_all(&subscribe(4, 1, &["devices/d2/#"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(4, &read_packet(&mut other).await), [0x01]);
    let deny = [
        ("IdentityType", "DEVICE"),
        ("Identity", identity.as_str()),
        ("Topic", "devices/d1/cmd"),
        ("PermitAction", "SUB"),
        ("Effect", "DENY"),
    ];
    for round in 0..30 {
        let mut session = raw_session(&tb, &d1, if round % 2 == 0 { 5 } else { 4 }, "d1").await;
        let level = if round % 2 == 0 { 5 } else { 4 };
        session
            .write_all(&subscribe(level, 1, &["devices/d1/#"]))
            .await
            .unwrap();
        assert_eq!(
            suback_codes(level, &read_packet(&mut session).await),
            [0x01]
        );
        // Keep it busy: it publishes to itself while the call runs.
        for pkid in 2..12u16 {
            session
                .write_all(&publish_qos1(level, pkid, "devices/d1/t", b"x"))
                .await
                .unwrap();
        }
        ok(&tb, "AddCustomAuthPermission", &deny).await;
        assert!(
            !online(&tb, "d1").await,
            "round {round}: still online after the answer"
        );
        ok(&tb, "DeleteCustomAuthPermission", &deny[..3]).await;
    }
    assert!(
        online(&tb, "d2").await,
        "another device's session was touched"
    );
}

/// A session too busy to re-judge (stuck, here by fault injection, as one
/// writing to a client that stopped reading is) does not keep a grant the
/// policies no longer give: after `mqtt.drop_timeout_ms` it is closed, and
/// only then does the call answer. (Without the wait, the call answers at
/// once and the session is still online.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_too_busy_to_rejudge_is_closed_before_the_answer() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| {
        fleet_policies(s);
        s.mqtt.drop_timeout_ms = 500;
    })
    .await;
    let d1 = ca.device("d1");
    let mut session = raw_session(&tb, &d1, 4, "d1").await;
    session
        .write_all(&subscribe(4, 1, &["devices/d1/#"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(4, &read_packet(&mut session).await), [0x01]);
    session
        .write_all(&publish_qos1(4, 2, certmq::fault::SESSION_STALL_TOPIC, b""))
        .await
        .unwrap();
    // The stall is reached once the session stops answering.
    session
        .write_all(&publish_qos1(4, 3, "devices/d1/t", b""))
        .await
        .unwrap();
    let identity = device_identity(&d1);
    ok(
        &tb,
        "AddCustomAuthPermission",
        &[
            ("IdentityType", "DEVICE"),
            ("Identity", &identity),
            ("Topic", "devices/d1/#"),
            ("PermitAction", "SUB"),
            ("Effect", "DENY"),
        ],
    )
    .await;
    assert!(
        !online(&tb, "d1").await,
        "the stuck session outlived the answer"
    );
    assert_eq!(closed_with(&mut session).await, None, "MQTT 3.1.1: closed");
}
