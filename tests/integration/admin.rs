//! The admin API's dialect: parameters, envelopes and error codes.

use certmq::admin::sign;
use serde_json::Value;

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca};

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["Code"], want_code, "{body}");
    let request_id = body["RequestId"].as_str().expect("RequestId");
    assert_eq!(request_id.len(), 36, "{body}");
    assert_eq!(request_id, request_id.to_uppercase());
    assert!(!body["Message"].as_str().expect("Message").is_empty());
    assert!(body["HostId"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_errors() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("d1");
    connect(&tb, &device, "d1", Version::V4).await.unwrap();
    let instance = tb.broker.settings().instance.id.clone();
    let ca_sn = ca.sn.to_string();
    let device_sn = device.identity.device_sn.to_string();

    // Missing DeviceSn -> 400 ParameterFieldCheckFailed.
    let (status, body) = tb
        .admin(&[
            ("Action", "InactivateDeviceCertificate"),
            ("MqttInstanceId", &instance),
            ("CaSn", &ca_sn),
        ])
        .await;
    assert_error(status, &body, 400, "ParameterFieldCheckFailed");
    assert!(
        body["Message"].as_str().unwrap().contains("DeviceSn"),
        "{body}"
    );

    // A DeviceSn that is not a serial number -> the same, naming it.
    let (status, body) = tb
        .admin(&[
            ("Action", "InactivateDeviceCertificate"),
            ("MqttInstanceId", &instance),
            ("CaSn", &ca_sn),
            ("DeviceSn", "not-hex"),
        ])
        .await;
    assert_error(status, &body, 400, "ParameterFieldCheckFailed");

    // Unknown instance -> 500 MqttInstanceNotFound.
    let (status, body) = tb
        .admin(&[
            ("Action", "InactivateDeviceCertificate"),
            ("MqttInstanceId", "mqtt-somebody-else"),
            ("CaSn", &ca_sn),
            ("DeviceSn", &device_sn),
        ])
        .await;
    assert_error(status, &body, 500, "MqttInstanceNotFound");

    // Unknown device -> 500 FindDeviceBySnError, for both operations.
    for action in ["InactivateDeviceCertificate", "ActiveDeviceCertificate"] {
        let (status, body) = tb
            .admin(&[
                ("Action", action),
                ("MqttInstanceId", &instance),
                ("CaSn", &ca_sn),
                ("DeviceSn", "0BADC0DE"),
            ])
            .await;
        assert_error(status, &body, 500, "FindDeviceBySnError");
    }

    // Unknown action -> 404 InvalidAction.NotFound; none -> 400.
    let (status, body) = tb.admin(&[("Action", "FlyToTheMoon")]).await;
    assert_error(status, &body, 404, "InvalidAction.NotFound");
    let (status, body) = tb.client.call_v1(&[], &Default::default()).await.unwrap();
    assert_error(status, &body, 400, "MissingAction");

    // Nothing changed through all of that.
    assert_eq!(
        tb.broker.registry().device_status(&device.identity),
        Some(certmq::CertStatus::Active)
    );
    assert_eq!(tb.broker.sessions().sessions_of(&device.identity), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_form_post_with_serial_spellings() {
    // The legacy SDK's style: HMAC-SHA1, every parameter (Action included)
    // in a form body; serials in lower case with colons.
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("d1");
    let _client = connect(&tb, &device, "d1", Version::V4).await.unwrap();
    let colon = |s: String| {
        s.to_lowercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut params: Vec<(String, String)> = [
        ("Action", "InactivateDeviceCertificate".to_owned()),
        ("MqttInstanceId", tb.instance()),
        ("CaSn", colon(ca.sn.to_string())),
        ("DeviceSn", colon(device.identity.device_sn.to_string())),
        ("Format", "JSON".into()),
        ("Version", "2020-04-20".into()),
        ("AccessKeyId", support::TEST_KEY_ID.into()),
        ("SignatureMethod", "HMAC-SHA1".into()),
        ("SignatureVersion", "1.0".into()),
        ("SignatureType", String::new()),
        ("SignatureNonce", uuid::Uuid::new_v4().to_string()),
        ("Timestamp", certmq::admin::client::now_iso8601()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let sts = sign::v1_string_to_sign("POST", &params);
    params.push((
        "Signature".into(),
        sign::v1_signature(support::TEST_KEY_SECRET, &sts),
    ));
    let response = reqwest::Client::new()
        .post(format!("http://{}/", tb.broker.admin_addr()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(&params).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json;charset=utf-8"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["DeviceSn"],
        device.identity.device_sn.to_string(),
        "{body}"
    );
    assert!(body["RequestId"].is_string());
    assert_eq!(
        tb.broker.registry().device_status(&device.identity),
        Some(certmq::CertStatus::Inactive)
    );
    assert_eq!(tb.broker.sessions().sessions_of(&device.identity), 0);
}
