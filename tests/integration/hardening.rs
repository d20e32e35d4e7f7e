//! Defects found in review, one test each: the will of a device cut off by
//! an operator, client-id claims that outlived their certificate, the
//! audit file, a dead or saturated router.

use std::time::Duration;

use serde_json::Value;

use crate::support::mqtt::{Ev, Version, connect, connect_with};
use crate::support::pki::client_config;
use crate::support::raw;
use crate::support::{self, Ca};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_will_after_an_administrative_drop() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let mut watcher = connect(&tb, &ca.device("watcher"), "watcher", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("status/#").await;
    let instance = tb.instance();
    for version in [Version::V4, Version::V5] {
        let device = ca.device(&format!("stolen-{version:?}"));
        let topic = format!("status/{version:?}");
        let id = format!("stolen-{version:?}");
        let tls = client_config(&tb.server_ca, Some(&device));
        let with_will = |payload: &'static [u8]| {
            let topic = topic.clone();
            move |o: &mut crate::support::mqtt::Options| o.will = Some((topic, payload.to_vec()))
        };
        // Inactivated: no will.
        let mut stolen = connect_with(
            tb.port(),
            tls.clone(),
            &id,
            version,
            with_will(b"inactivated"),
        )
        .await
        .unwrap();
        tb.inactivate(&device).await;
        stolen.expect_closed().await;
        tb.activate(&device).await;
        // Kicked (CloseConnection): no will either.
        let mut kicked = connect_with(tb.port(), tls.clone(), &id, version, with_will(b"kicked"))
            .await
            .unwrap();
        let (status, body) = tb
            .admin(&[
                ("Action", "CloseConnection"),
                ("InstanceId", &instance),
                ("ClientId", &id),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        kicked.expect_closed().await;
        // Deleted: none.
        let mut deleted = connect_with(tb.port(), tls.clone(), &id, version, with_will(b"deleted"))
            .await
            .unwrap();
        let (status, body) = tb.device_call("DeleteDeviceCertificate", &device).await;
        assert_eq!(status, 200, "{body}");
        deleted.expect_closed().await;
        // A session that ends abnormally otherwise (taken over by a new
        // connection of the same certificate) still leaves its will: it is
        // the first will the watcher sees.
        let _first = connect_with(
            tb.port(),
            tls.clone(),
            &id,
            version,
            with_will(b"taken over"),
        )
        .await
        .unwrap();
        let _second = connect_with(tb.port(), tls, &id, version, |_| {})
            .await
            .unwrap();
        assert_eq!(watcher.expect_publish(&topic).await, b"taken over");
    }
}

/// A client id stored under a persistent session of a certificate that is
/// then inactivated (or deleted) is free again, and whoever takes it
/// inherits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_access_releases_persistent_client_ids() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let (owner, next, publisher) = (ca.device("owner"), ca.device("next"), ca.device("pub"));
    let publisher = connect(&tb, &publisher, "pub", Version::V4).await.unwrap();
    for (action, version) in [
        ("InactivateDeviceCertificate", Version::V4),
        ("DeleteDeviceCertificate", Version::V5),
    ] {
        let id = format!("kept-{version:?}");
        let topic = format!("jobs/{version:?}");
        let persistent = |o: &mut crate::support::mqtt::Options| o.clean = false;
        let tls = client_config(&tb.server_ca, Some(&owner));
        let mut first = connect_with(tb.port(), tls, &id, version, persistent)
            .await
            .unwrap();
        first.subscribe(&format!("{topic}/#")).await;
        first.disconnect().await;
        assert!(matches!(
            first.next(Duration::from_secs(5)).await,
            Some(Ev::Closed { .. })
        ));
        support::wait_until(
            Duration::from_secs(5),
            "the owner to be offline",
            async || !tb.broker.sessions().is_online(&id),
        )
        .await;
        // Queued for the owner's stored session.
        publisher
            .publish(&format!("{topic}/queued"), b"for the owner", 1)
            .await;
        // While the owner holds the id, nobody else gets it.
        let tls_next = client_config(&tb.server_ca, Some(&next));
        let refused = connect_with(tb.port(), tls_next.clone(), &id, version, persistent).await;
        assert!(
            refused.is_err(),
            "another certificate took a held client id"
        );

        let (status, body) = tb.device_call(action, &owner).await;
        assert_eq!(status, 200, "{body}");
        let mut taker = connect_with(tb.port(), tls_next, &id, version, persistent)
            .await
            .unwrap_or_else(|e| panic!("after {action} the client id is still held: {e}"));
        taker.subscribe(&format!("{topic}/#")).await;
        publisher
            .publish(&format!("{topic}/fresh"), b"for the taker", 1)
            .await;
        // The owner's queued message went with its session.
        match taker.next(Duration::from_secs(10)).await {
            Some(Ev::Publish { topic: t, .. }) => {
                assert_eq!(
                    t,
                    format!("{topic}/fresh"),
                    "the new holder inherited the old session"
                )
            }
            other => panic!("expected the fresh message, got {other:?}"),
        }
        taker.disconnect().await;
        if action == "InactivateDeviceCertificate" {
            tb.activate(&owner).await;
        }
    }
}

/// An empty client id gets a generated one, clean: nothing is kept when it
/// leaves, whatever it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_client_ids_leave_nothing_behind() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let tls = client_config(&tb.server_ca, Some(&ca.device("anonymous")));
    for _ in 0..3 {
        let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
        // MQTT 5 CONNECT, empty client id, clean start off.
        let mut connect = raw::connect_packet(b"MQTT", 5, "", 30);
        connect[2 + 2 + 4 + 1] = 0x00;
        let connack = raw::exchange(&mut stream, &connect, 4).await.unwrap();
        assert_eq!(connack[0], 0x20, "{connack:02x?}");
        assert_eq!(connack[3], 0x00, "refused: {connack:02x?}");
        assert_eq!(tb.broker.sessions().claimed_client_ids(), 1);
        drop(stream);
        support::wait_until(Duration::from_secs(5), "the session to go", async || {
            tb.broker.sessions().is_empty()
        })
        .await;
        assert_eq!(tb.broker.sessions().claimed_client_ids(), 0);
    }
}

fn audit_records(tb: &support::TestBroker) -> Vec<Value> {
    let path = tb.broker.settings().storage.data_dir.join("audit.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_changing_call_leaves_one_audit_record_whatever_the_log_level() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.log.level = "warn".into()).await;
    let device = ca.device("audited");
    let client = connect(&tb, &device, "audited", Version::V4).await.unwrap();
    // Admitted, so registered on its first connection.
    drop(client);
    // Reads leave no record.
    let (status, _) = tb.device_call("GetDeviceCertificate", &device).await;
    assert_eq!(status, 200);
    assert!(audit_records(&tb).is_empty(), "{:?}", audit_records(&tb));

    let (status, ok) = tb.device_call("InactivateDeviceCertificate", &device).await;
    assert_eq!(status, 200);
    // A refused one (wrong secret) is recorded too, with its outcome.
    let forger = certmq::admin::client::AdminClient::new(
        &tb.broker.admin_addr().to_string(),
        support::TEST_KEY_ID,
        "not-the-secret-0123456789",
    )
    .unwrap();
    let (status, refused) = forger
        .call(
            "DeleteCaCertificate",
            &[
                ("MqttInstanceId".into(), tb.instance()),
                ("Sn".into(), ca.sn.to_string()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{refused}");

    // In the file as soon as the calls answered.
    let records = audit_records(&tb);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["request_id"], ok["RequestId"]);
    assert_eq!(records[0]["action"], "InactivateDeviceCertificate");
    assert_eq!(records[0]["code"], "Success");
    assert!(
        records[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(
        records[0]["account"],
        tb.broker.settings().instance.owner.as_str()
    );
    assert_eq!(
        records[0]["targets"]["DeviceSn"],
        device.identity.device_sn.to_string()
    );
    assert_eq!(records[1]["request_id"], refused["RequestId"]);
    assert_eq!(records[1]["action"], "DeleteCaCertificate");
    assert_eq!(records[1]["code"], "SignatureDoesNotMatch");
    assert_eq!(records[1]["account"], Value::Null);
    assert!(
        records[1]["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    // Nothing secret in it.
    let text =
        std::fs::read_to_string(tb.broker.settings().storage.data_dir.join("audit.jsonl")).unwrap();
    assert!(!text.contains(support::TEST_KEY_SECRET));

    // A flood of forged calls, each dragging a huge parameter into its
    // error message, cannot rotate the genuine trail away: records are
    // capped in size, and unauthenticated refusals in number.
    let huge = "x".repeat(5_000);
    for _ in 0..60 {
        let (status, _) = forger
            .call(
                "DeleteCaCertificate",
                &[
                    ("MqttInstanceId".into(), tb.instance()),
                    ("Sn".into(), huge.clone()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(status, 400);
    }
    let records = audit_records(&tb);
    let forged = records.len() - 2;
    assert!((1..=40).contains(&forged), "{forged} forged calls recorded");
    for record in &records {
        assert!(record.to_string().len() < 2_000, "{record}");
    }
    let metrics = support::scrape(&tb).await;
    let suppressed = support::metric(&metrics, "certmq_audit_records_suppressed_total") as usize;
    assert_eq!(forged + suppressed, 60, "{metrics}");

    // Kept across a restart: appended to.
    let tb = tb.restart().await;
    tb.activate(&device).await;
    let before = records.len();
    let records = audit_records(&tb);
    assert_eq!(records.len(), before + 1, "{records:?}");
    assert_eq!(records[before]["action"], "ActiveDeviceCertificate");
}

async fn readyz(tb: &support::TestBroker) -> (u16, String) {
    let response = reqwest::get(format!("http://{}/readyz", tb.broker.admin_addr()))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The router's timer dying (here by fault injection: it would expire no
/// session and send no delayed will again) is seen: readiness says so,
/// and the broker reports itself failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_router_makes_the_broker_unready_and_failed() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    assert_eq!(readyz(&tb).await, (200, "ready\n".into()));
    let mut bystander = connect(&tb, &ca.device("bystander"), "bystander", Version::V5)
        .await
        .unwrap();
    bystander.subscribe("x/#").await;
    let crasher = connect(&tb, &ca.device("crasher"), "crasher", Version::V4)
        .await
        .unwrap();
    crasher
        .publish(certmq::fault::ROUTER_PANIC_TOPIC, b"boom", 0)
        .await;
    let failed = tokio::time::timeout(Duration::from_secs(10), tb.broker.failed())
        .await
        .expect("the broker never noticed its router died");
    assert!(failed.contains("router's timer"), "{failed}");
    let (status, body) = readyz(&tb).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("router's timer"), "{body}");
}

/// A subscriber that stops reading holds nobody up for long: its mailbox
/// is bounded, publishers wait for room once (`mqtt.max_publish_wait_ms`),
/// then what does not fit is dropped for it alone, and counted; another
/// subscriber of the same topics gets every message, the admin API answers
/// and an inactivation drops its session meanwhile, and no async worker
/// blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_blocks_no_one() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    // The stuck one: subscribes, then never reads its socket again.
    let stuck_device = ca.device("stuck");
    let mut stuck = crate::authz::raw_session(&tb, &stuck_device, 4, "stuck").await;
    use tokio::io::AsyncWriteExt;
    stuck
        .write_all(&crate::authz::subscribe(4, 1, &["flood/#"]))
        .await
        .unwrap();
    assert_eq!(
        crate::authz::suback_codes(4, &crate::authz::read_packet(&mut stuck).await),
        [0x01]
    );
    let mut sink = connect(&tb, &ca.device("sink"), "sink", Version::V4)
        .await
        .unwrap();
    sink.subscribe_qos("flood/#", 0).await;
    let victim_device = ca.device("victim");
    let mut victim = connect(&tb, &victim_device, "victim", Version::V5)
        .await
        .unwrap();
    let mut flooders = Vec::new();
    for i in 0..FLOODERS {
        let device = ca.device(&format!("flooder-{i}"));
        flooders.push(
            connect(&tb, &device, &format!("flooder-{i}"), Version::V4)
                .await
                .unwrap(),
        );
    }
    // In rounds: every flooder sends 100 messages of 1 KiB (together far
    // more than the stuck one's socket buffers and mailbox hold), every
    // PUBACK comes back, and the sink has them all, before the next round.
    let payload = vec![b'x'; 1024];
    let mut got = 0;
    for round in 0..ROUNDS {
        for (i, flooder) in flooders.iter().enumerate() {
            for _ in 0..PER_ROUND {
                flooder.publish(&format!("flood/{i}"), &payload, 1).await;
            }
        }
        for flooder in &flooders {
            tokio::time::timeout(Duration::from_secs(30), flooder.acknowledged())
                .await
                .unwrap_or_else(|_| panic!("round {round}: a publisher was held up"));
        }
        while got < (round + 1) * FLOODERS * PER_ROUND {
            match sink.next(Duration::from_secs(30)).await {
                Some(Ev::Publish { topic, .. }) if topic.starts_with("flood/") => got += 1,
                Some(Ev::Publish { .. }) => {}
                other => panic!("round {round}, after {got} messages: {other:?}"),
            }
        }
        if round == 0 {
            // The admin API answers, and an inactivation drops its session.
            let call = tokio::time::timeout(Duration::from_secs(10), tb.inactivate(&victim_device));
            call.await.expect("the admin API stalled behind the flood");
            assert_eq!(
                victim.expect_closed().await.as_deref(),
                Some("AdministrativeAction")
            );
            let (status, _) = tokio::time::timeout(Duration::from_secs(10), readyz(&tb))
                .await
                .expect("readyz stalled");
            assert_eq!(status, 200);
        }
    }
    for flooder in flooders {
        flooder.disconnect().await;
    }
    let metrics = support::scrape(&tb).await;
    let dropped = support::metric(
        &metrics,
        "certmq_messages_dropped_total{reason=\"queue_full\"}",
    );
    assert!(
        dropped > 0.0,
        "the stuck subscriber's overflow is counted: {dropped}"
    );
    drop(stuck);
}

const FLOODERS: usize = 4;
const ROUNDS: usize = 25;
const PER_ROUND: usize = 100;
