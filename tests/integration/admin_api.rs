//! The whole admin API family through certmq's signing client: signatures,
//! permissions, rate limits, and every operation's semantics.

use certmq::admin::auth::AccessKey;
use certmq::admin::client::{AdminClient, Overrides, iso8601};
use certmq::pki::{CaSigner, KeyKind};
use serde_json::Value;

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca, TestBroker};

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn code(body: &Value) -> &str {
    body["Code"].as_str().unwrap_or("")
}

async fn call(tb: &TestBroker, action: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
    tb.client.call(action, &p(pairs)).await.unwrap()
}

/// Registers `ca` through the API, with its verification certificate.
async fn register(tb: &TestBroker, ca: &Ca) -> (u16, Value) {
    let instance = tb.instance();
    let (status, body) = call(tb, "GetRegisterCode", &[("MqttInstanceId", &instance)]).await;
    assert_eq!(status, 200, "{body}");
    let code = body["RegisterCode"].as_str().unwrap().to_owned();
    let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
    let verification = signer.issue_verification(&code, KeyKind::P256).unwrap();
    call(
        tb,
        "RegisterCaCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("CaName", "fleet east"),
            ("CaContent", &ca.cert_pem),
            ("VerificationContent", &verification.cert_pem),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_timestamps_and_nonces() {
    let tb = support::start(&[]).await;
    let instance = tb.instance();
    let params = p(&[("MqttInstanceId", &instance)]);
    let action = "GetRegisterCode";

    // Unsigned.
    let response = reqwest::get(format!(
        "http://{}/?Action={action}&MqttInstanceId={instance}",
        tb.broker.admin_addr()
    ))
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "MissingAccessKeyId");

    // Unknown key, both schemes.
    let stranger = AdminClient::new(
        &tb.broker.admin_addr().to_string(),
        "LTAINoSuchKey",
        "whatever-secret-123",
    )
    .unwrap();
    let (status, body) = stranger.call(action, &params).await.unwrap();
    assert_eq!((status, code(&body)), (404, "InvalidAccessKeyId.NotFound"));
    let mut v1 = params.clone();
    v1.push(("Action".into(), action.into()));
    let (status, body) = stranger.call_v1(&v1, &Overrides::default()).await.unwrap();
    assert_eq!((status, code(&body)), (404, "InvalidAccessKeyId.NotFound"));

    // Wrong secret.
    let wrong = Overrides {
        secret: Some("not-the-secret-at-all".into()),
        ..Default::default()
    };
    let (status, body) = tb.client.call_with(action, &params, &wrong).await.unwrap();
    assert_eq!((status, code(&body)), (400, "SignatureDoesNotMatch"));
    assert!(
        !body["Message"]
            .as_str()
            .unwrap()
            .contains(support::TEST_KEY_SECRET)
    );
    let (status, body) = tb.client.call_v1(&v1, &wrong).await.unwrap();
    assert_eq!((status, code(&body)), (400, "SignatureDoesNotMatch"));

    // Stale and future timestamps (the window is 15 minutes).
    for minutes in [-16i64, 16] {
        let stale = Overrides {
            date: Some(iso8601(
                time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes),
            )),
            ..Default::default()
        };
        let (status, body) = tb.client.call_with(action, &params, &stale).await.unwrap();
        assert_eq!(
            (status, code(&body)),
            (400, "InvalidTimeStamp.Expired"),
            "{minutes} min"
        );
        let (status, body) = tb.client.call_v1(&v1, &stale).await.unwrap();
        assert_eq!(
            (status, code(&body)),
            (400, "InvalidTimeStamp.Expired"),
            "{minutes} min"
        );
    }
    // Within the window is fine.
    let skewed = Overrides {
        date: Some(iso8601(
            time::OffsetDateTime::now_utc() - time::Duration::minutes(10),
        )),
        ..Default::default()
    };
    assert_eq!(
        tb.client
            .call_with(action, &params, &skewed)
            .await
            .unwrap()
            .0,
        200
    );

    // A nonce is good once, per scheme.
    for scheme in ["v3", "v1"] {
        let once = Overrides {
            nonce: Some(format!("nonce-{scheme}-{}", uuid::Uuid::new_v4())),
            ..Default::default()
        };
        let send = || async {
            if scheme == "v3" {
                tb.client.call_with(action, &params, &once).await.unwrap()
            } else {
                tb.client.call_v1(&v1, &once).await.unwrap()
            }
        };
        assert_eq!(send().await.0, 200);
        let (status, body) = send().await;
        assert_eq!(
            (status, code(&body)),
            (400, "SignatureNonceUsed"),
            "{scheme}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_owner_and_edition() {
    let ca = Ca::new("fleet CA");
    let keys = vec![
        AccessKey {
            id: "LTAIReadOnly".into(),
            secret: "read-only-secret-0001".into(),
            account: "local".into(),
            actions: vec!["mq:Get*".into(), "mq:List*".into()],
        },
        AccessKey {
            id: "LTAIUnregister".into(),
            secret: "unregister-secret-0001".into(),
            account: "local".into(),
            actions: vec!["mq:UnregisterDeviceCertificate".into()],
        },
        AccessKey {
            id: "LTAIOtherAccount".into(),
            secret: "other-account-secret-01".into(),
            account: "someone-else".into(),
            actions: vec!["*".into()],
        },
    ];
    let tb = support::start_with(&[&ca], |s| s.admin.access_keys.extend(keys)).await;
    let device = ca.device("d1");
    let _c = connect(&tb, &device, "d1", Version::V4).await.unwrap();
    let addr = tb.broker.admin_addr().to_string();
    let instance = tb.instance();
    let ca_sn = ca.sn.to_string();
    let device_sn = device.identity.device_sn.to_string();
    let device_params = p(&[
        ("MqttInstanceId", &instance),
        ("CaSn", &ca_sn),
        ("DeviceSn", &device_sn),
    ]);

    let read_only = AdminClient::new(&addr, "LTAIReadOnly", "read-only-secret-0001").unwrap();
    let (status, _) = read_only
        .call("GetDeviceCertificate", &device_params)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = read_only
        .call("InactivateDeviceCertificate", &device_params)
        .await
        .unwrap();
    assert_eq!((status, code(&body)), (403, "PermissionCheckFailed"));
    assert_eq!(tb.broker.sessions().sessions_of(&device.identity), 1);

    let unregister = AdminClient::new(&addr, "LTAIUnregister", "unregister-secret-0001").unwrap();
    let (status, body) = unregister
        .call("ActiveDeviceCertificate", &device_params)
        .await
        .unwrap();
    assert_eq!((status, code(&body)), (403, "PermissionCheckFailed"));
    let (status, body) = unregister
        .call("InactivateDeviceCertificate", &device_params)
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "mq:UnregisterDeviceCertificate allows inactivation: {body}"
    );

    let other = AdminClient::new(&addr, "LTAIOtherAccount", "other-account-secret-01").unwrap();
    let (status, body) = other
        .call("GetDeviceCertificate", &device_params)
        .await
        .unwrap();
    assert_eq!((status, code(&body)), (403, "MqttOwnerCheckError"));

    // An instance of another edition: certificate operations are refused,
    // session operations are not.
    let standard = support::start_with(&[&ca], |s| s.instance.edition = "standard".into()).await;
    let instance = standard.instance();
    let (status, body) = call(
        &standard,
        "GetRegisterCode",
        &[("MqttInstanceId", &instance)],
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, "InstancePermissionCheckFailed")
    );
    let (status, body) = call(
        &standard,
        "QuerySessionByClientId",
        &[("InstanceId", &instance), ("ClientId", "x")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_throttling() {
    let tb = support::start_with(&[], |s| {
        s.admin.rate_limits.insert("GetRegisterCode".into(), 3);
    })
    .await;
    let instance = tb.instance();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, body) = call(&tb, "GetRegisterCode", &[("MqttInstanceId", &instance)]).await;
        statuses.push((status, code(&body).to_owned()));
    }
    assert!(statuses[..3].iter().all(|(s, _)| *s == 200), "{statuses:?}");
    assert!(
        statuses[3..]
            .iter()
            .any(|(s, c)| *s == 400 && c == "Throttling.User"),
        "{statuses:?}"
    );
    // Other actions have their own budget.
    let (status, _) = call(&tb, "ListCaCertificate", &[("MqttInstanceId", &instance)]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_registration_checks_proof_of_possession() {
    let tb = support::start(&[]).await;
    let instance = tb.instance();
    let ca = Ca::new("fleet CA");
    let impostor = Ca::new("impostor CA");
    let (_, body) = call(&tb, "GetRegisterCode", &[("MqttInstanceId", &instance)]).await;
    let code_value = body["RegisterCode"].as_str().unwrap().to_owned();
    assert_eq!(code_value, tb.broker.registration_code());
    let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
    let impostor_signer = CaSigner::from_pem(&impostor.cert_pem, &impostor.key_pem).unwrap();
    let good = signer
        .issue_verification(&code_value, KeyKind::P256)
        .unwrap()
        .cert_pem;
    let wrong_code = signer
        .issue_verification("SOME-OTHER-CODE", KeyKind::P256)
        .unwrap()
        .cert_pem;
    let wrong_key = impostor_signer
        .issue_verification(&code_value, KeyKind::P256)
        .unwrap()
        .cert_pem;
    // A device certificate offered as a CA is refused before anything else.
    let leaf = ca.device("not-a-ca").cert_pem;
    let cases: [(&str, &str, &str); 4] = [
        (&leaf, &good, "not a CA"),
        (&ca.cert_pem, &wrong_key, "not signed by the CA"),
        (&ca.cert_pem, &wrong_code, "registration code"),
        (&ca.cert_pem, "garbage", "VerificationContent"),
    ];
    for (ca_pem, verification, needle) in cases {
        let (status, body) = call(
            &tb,
            "RegisterCaCertificate",
            &[
                ("MqttInstanceId", &instance),
                ("CaName", "x"),
                ("CaContent", ca_pem),
                ("VerificationContent", verification),
            ],
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "ParameterFieldCheckFailed"),
            "{needle}: {body}"
        );
        assert!(
            body["Message"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    }
    let good_args = [
        ("MqttInstanceId", instance.as_str()),
        ("CaName", "fleet east"),
        ("CaContent", ca.cert_pem.as_str()),
        ("VerificationContent", good.as_str()),
    ];
    let register_good = || call(&tb, "RegisterCaCertificate", &good_args);
    let (status, body) = register_good().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Sn"], ca.sn.to_string());
    let (status, body) = register_good().await;
    assert_eq!((status, code(&body)), (400, "ParameterFieldCheckFailed"));
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("already registered"),
        "{body}"
    );

    // An expired CA is refused.
    let expired_ca = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "old CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let old_signer = CaSigner::from_pem(&expired_ca.0, &expired_ca.1).unwrap();
    let old_verification = old_signer
        .issue_verification(&code_value, KeyKind::P256)
        .unwrap()
        .cert_pem;
    let (status, body) = call(
        &tb,
        "RegisterCaCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("CaName", "old"),
            ("CaContent", &expired_ca.0),
            ("VerificationContent", &old_verification),
        ],
    )
    .await;
    assert_eq!((status, code(&body)), (400, "ParameterFieldCheckFailed"));
    assert!(
        body["Message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_lifecycle_through_the_api() {
    let tb = support::start(&[]).await;
    let instance = tb.instance();
    let ca = Ca::new("fleet CA");
    let (status, body) = register(&tb, &ca).await;
    assert_eq!(status, 200, "{body}");
    let sn = body["Sn"].as_str().unwrap().to_owned();

    // The CA as the API shows it.
    let (_, body) = call(
        &tb,
        "GetCaCertificate",
        &[("MqttInstanceId", &instance), ("Sn", &sn)],
    )
    .await;
    let data = &body["Data"];
    assert_eq!(data["Status"], "1");
    assert_eq!(data["CaName"], "fleet east");
    assert_eq!(data["RegistrationCode"], tb.broker.registration_code());
    assert!(data["ValidBegin"].as_str().unwrap().parse::<i64>().unwrap() > 1_600_000_000_000);
    assert!(
        data["VerificationContent"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let (_, body) = call(
        &tb,
        "ListCaCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("PageNo", "1"),
            ("PageSize", "10"),
        ],
    )
    .await;
    assert_eq!(body["Data"]["Total"], 1);
    assert_eq!(body["Data"]["PageNo"], 1);
    assert_eq!(body["Data"]["CaCertificateVOS"][0]["Sn"], sn.as_str());

    // Devices register on first connection.
    let (a, b) = (ca.device("sensor-a"), ca.device("sensor-b"));
    let mut client_a = connect(&tb, &a, "sensor-a", Version::V5).await.unwrap();
    let mut client_b = connect(&tb, &b, "sensor-b", Version::V4).await.unwrap();
    let (_, body) = call(
        &tb,
        "ListDeviceCertificateByCaSn",
        &[
            ("MqttInstanceId", &instance),
            ("CaSn", &sn),
            ("PageNo", "1"),
            ("PageSize", "1"),
        ],
    )
    .await;
    assert_eq!(body["Data"]["Total"], 2, "{body}");
    assert_eq!(body["Data"]["PageSize"], 1);
    assert_eq!(
        body["Data"]["DeviceCertificateVOS"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        body["Data"]["DeviceCertificateVOS"][0]["DeviceName"],
        "sensor-a"
    );
    // certmq's extensions (the console's): live sessions, and a search by
    // name or serial, any case, with LIKE's wildcards taken literally.
    assert_eq!(
        body["Data"]["DeviceCertificateVOS"][0]["LiveSessions"], 1,
        "{body}"
    );
    let b_sn = b.identity.device_sn.to_string();
    for (keyword, found) in [
        ("SENSOR-B", vec!["sensor-b"]),
        ("sensor", vec!["sensor-a", "sensor-b"]),
        (&b_sn[2..10].to_lowercase(), vec!["sensor-b"]),
        ("sensor_", vec![]),
        ("%", vec![]),
    ] {
        let (status, body) = call(
            &tb,
            "ListDeviceCertificateByCaSn",
            &[
                ("MqttInstanceId", &instance),
                ("CaSn", &sn),
                ("Keyword", keyword),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let names: Vec<&str> = body["Data"]["DeviceCertificateVOS"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["DeviceName"].as_str().unwrap())
            .collect();
        assert_eq!(names, found, "Keyword {keyword}");
        assert_eq!(body["Data"]["Total"], found.len(), "Keyword {keyword}");
    }
    let (_, body) = call(
        &tb,
        "GetCaCertificate",
        &[("MqttInstanceId", &instance), ("Sn", &sn)],
    )
    .await;
    assert_eq!(body["Data"]["LiveSessions"], 2, "{body}");
    let (_, body) = call(
        &tb,
        "ListDeviceCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("PageNo", "2"),
            ("PageSize", "1"),
        ],
    )
    .await;
    assert_eq!(
        body["Data"]["DeviceCertificateVOS"][0]["DeviceName"],
        "sensor-b"
    );
    let a_sn = a.identity.device_sn.to_string();
    let (_, body) = call(
        &tb,
        "GetDeviceCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("CaSn", &sn),
            ("DeviceSn", &a_sn),
        ],
    )
    .await;
    assert_eq!(body["Data"]["Status"], "1");
    assert_eq!(
        body["Data"]["DeviceContent"].as_str().unwrap().trim(),
        a.cert_pem.trim()
    );

    // Inactivating the CA drops every session of its devices; activating it
    // admits them again with their own statuses unchanged.
    let (status, _) = call(
        &tb,
        "InactivateCaCertificate",
        &[("MqttInstanceId", &instance), ("Sn", &sn)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        client_a.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    assert_eq!(client_b.expect_closed().await, None);
    assert!(connect(&tb, &a, "sensor-a", Version::V4).await.is_err());
    let (_, body) = call(
        &tb,
        "GetCaCertificate",
        &[("MqttInstanceId", &instance), ("Sn", &sn)],
    )
    .await;
    assert_eq!(body["Data"]["Status"], "0");
    let (status, _) = call(
        &tb,
        "ActiveCaCertificate",
        &[("MqttInstanceId", &instance), ("Sn", &sn)],
    )
    .await;
    assert_eq!(status, 200);
    let _client_a = connect(&tb, &a, "sensor-a", Version::V4).await.unwrap();

    // Deleting a device drops its session and its record; it comes back on
    // its next connection (inactivation is what keeps a device out).
    let (status, _) = call(
        &tb,
        "DeleteDeviceCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("CaSn", &sn),
            ("DeviceSn", &a_sn),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tb.broker.sessions().sessions_of(&a.identity), 0);
    let (status, body) = call(
        &tb,
        "GetDeviceCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("CaSn", &sn),
            ("DeviceSn", &a_sn),
        ],
    )
    .await;
    assert_eq!((status, code(&body)), (500, "FindDeviceBySnError"));
    let _client_a = connect(&tb, &a, "sensor-a", Version::V4).await.unwrap();
    assert!(
        tb.broker
            .registry()
            .device(&a.identity)
            .await
            .unwrap()
            .is_some()
    );

    // Deleting the CA drops its sessions and removes it and its devices.
    let (status, _) = call(
        &tb,
        "DeleteCaCertificate",
        &[("MqttInstanceId", &instance), ("Sn", &sn)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tb.broker.sessions().len(), 0);
    let (status, body) = call(
        &tb,
        "GetCaCertificate",
        &[("MqttInstanceId", &instance), ("Sn", &sn)],
    )
    .await;
    assert_eq!((status, code(&body)), (500, "FindCaBySnError"));
    let (_, body) = call(
        &tb,
        "ListDeviceCertificate",
        &[("MqttInstanceId", &instance)],
    )
    .await;
    assert_eq!(body["Data"]["Total"], 0);
    assert!(connect(&tb, &b, "sensor-b", Version::V4).await.is_err());

    // Paging parameters are checked.
    let (status, body) = call(
        &tb,
        "ListCaCertificate",
        &[("MqttInstanceId", &instance), ("PageSize", "101")],
    )
    .await;
    assert_eq!((status, code(&body)), (400, "ParameterFieldCheckFailed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_operations() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let instance = tb.instance();
    let device = ca.device("d1");
    let mut first = connect(&tb, &device, "client-one", Version::V5)
        .await
        .unwrap();
    let _second = connect(&tb, &device, "client-two", Version::V4)
        .await
        .unwrap();

    let (_, body) = call(
        &tb,
        "QuerySessionByClientId",
        &[("InstanceId", &instance), ("ClientId", "client-one")],
    )
    .await;
    assert_eq!(body["OnlineStatus"], true);
    let (_, body) = call(
        &tb,
        "BatchQuerySessionByClientIds",
        &[
            ("InstanceId", &instance),
            ("ClientIdList.1", "client-one"),
            ("ClientIdList.2", "nobody"),
            ("ClientIdList.3", "client-two"),
        ],
    )
    .await;
    let list = body["OnlineStatusList"].as_array().unwrap();
    let online: Vec<(&str, bool)> = list
        .iter()
        .map(|e| {
            (
                e["ClientId"].as_str().unwrap(),
                e["OnlineStatus"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        online,
        [
            ("client-one", true),
            ("nobody", false),
            ("client-two", true)
        ]
    );

    let (status, body) = call(
        &tb,
        "CloseConnection",
        &[("InstanceId", &instance), ("ClientId", "client-one")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Code"], 200);
    assert_eq!(body["Success"], true);
    assert_eq!(
        first.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    let (_, body) = call(
        &tb,
        "QuerySessionByClientId",
        &[("InstanceId", &instance), ("ClientId", "client-one")],
    )
    .await;
    assert_eq!(body["OnlineStatus"], false);
    // Only that client id: the device's other session stays, and the device
    // may reconnect.
    assert_eq!(tb.broker.sessions().sessions_of(&device.identity), 1);
    connect(&tb, &device, "client-one", Version::V5)
        .await
        .unwrap();

    let many: Vec<(String, String)> = (1..=11)
        .map(|i| (format!("ClientIdList.{i}"), format!("c{i}")))
        .collect();
    let mut params = p(&[("InstanceId", &instance)]);
    params.extend(many);
    let (status, body) = tb
        .client
        .call("BatchQuerySessionByClientIds", &params)
        .await
        .unwrap();
    assert_eq!((status, code(&body)), (400, "ParameterFieldCheckFailed"));
}
