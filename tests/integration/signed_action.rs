//! What an admin call does is decided by its signature alone: the action
//! (and the API version) come from the signed part of the request, and a
//! request that names two actions is refused. Requests are signed here by
//! hand (with certmq's signature functions, pinned elsewhere against the
//! SDKs' vectors), so that the unsigned parts can be chosen.

use certmq::admin::client::now_iso8601;
use certmq::admin::sign;
use serde_json::Value;

use crate::support::{self, TEST_KEY_ID, TEST_KEY_SECRET, TestBroker};

/// A V1 (HMAC-SHA1) GET with `params` signed and `headers` added unsigned.
async fn v1(tb: &TestBroker, params: &[(&str, &str)], headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in [
        ("Format", "JSON".to_owned()),
        ("AccessKeyId", TEST_KEY_ID.to_owned()),
        ("SignatureMethod", "HMAC-SHA1".to_owned()),
        ("SignatureVersion", "1.0".to_owned()),
        ("SignatureNonce", uuid::Uuid::new_v4().to_string()),
        ("Timestamp", now_iso8601()),
    ] {
        all.push((k.to_owned(), v));
    }
    // In the order the query string will have, so that a repeated
    // parameter is signed in the order the server reads it.
    all.sort();
    let signature = sign::v1_signature(TEST_KEY_SECRET, &sign::v1_string_to_sign("GET", &all));
    all.push(("Signature".into(), signature));
    let url = format!(
        "http://{}/?{}",
        tb.broker.admin_addr(),
        sign::canonical_query(&all)
    );
    let mut request = reqwest::Client::new().get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    answer(request).await
}

/// A V3 (ACS3-HMAC-SHA256) POST: `signed` headers are signed, `unsigned`
/// ones are sent without being listed in SignedHeaders.
async fn v3(
    tb: &TestBroker,
    query: &[(&str, &str)],
    signed: &[(&str, &str)],
    unsigned: &[(&str, &str)],
) -> (u16, Value) {
    v3_body(tb, query, signed, unsigned, "").await
}

/// [`v3`] with a (signed, hashed) body.
async fn v3_body(
    tb: &TestBroker,
    query: &[(&str, &str)],
    signed: &[(&str, &str)],
    unsigned: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let authority = tb.broker.admin_addr().to_string();
    let payload = sign::sha256_hex(body.as_bytes());
    let nonce = uuid::Uuid::new_v4().to_string();
    let date = now_iso8601();
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), authority.clone()),
        ("x-acs-content-sha256".into(), payload.clone()),
        ("x-acs-date".into(), date),
        ("x-acs-signature-nonce".into(), nonce),
    ];
    headers.extend(signed.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    headers.sort();
    let names: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
    let query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let canonical = sign::v3_canonical_request(
        "POST",
        "/",
        &query,
        &names,
        |name| {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect()
        },
        &payload,
    );
    let signature = sign::v3_signature(TEST_KEY_SECRET, &sign::v3_string_to_sign(&canonical));
    let authorization = format!(
        "{} Credential={TEST_KEY_ID},SignedHeaders={},Signature={signature}",
        sign::V3_ALGORITHM,
        names.join(";")
    );
    let url = format!("http://{authority}/?{}", sign::canonical_query(&query));
    let mut request = reqwest::Client::new()
        .post(url)
        .header("authorization", authorization)
        .body(body.to_owned());
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        request = request.header(k.as_str(), v.as_str());
    }
    for (k, v) in unsigned {
        request = request.header(*k, *v);
    }
    answer(request).await
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn code(body: &Value) -> &str {
    body["Code"].as_str().unwrap_or("")
}

const VERSION: (&str, &str) = ("Version", "2020-04-20");
const V3_VERSION: (&str, &str) = ("x-acs-version", "2020-04-20");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_runs_only_its_signed_action() {
    let ca = support::Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let instance = tb.instance();
    let ca_sn = ca.sn.to_string();
    let get = [
        ("Action", "GetCaCertificate"),
        ("MqttInstanceId", instance.as_str()),
        ("Sn", ca_sn.as_str()),
        VERSION,
    ];
    let (status, body) = v1(&tb, &get, &[]).await;
    assert_eq!(status, 200, "{body}");

    // Someone on the path adds an x-acs-action header to a signed
    // GetCaCertificate: refused, and nothing is deleted.
    let (status, body) = v1(&tb, &get, &[("x-acs-action", "DeleteCaCertificate")]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), "ParameterFieldCheckFailed", "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("DeleteCaCertificate"),
        "{body}"
    );
    assert!(
        tb.broker.registry().ca(&ca.sn).is_some(),
        "the CA was deleted"
    );

    // A header that agrees is harmless.
    let (status, body) = v1(&tb, &get, &[("x-acs-action", "GetCaCertificate")]).await;
    assert_eq!(status, 200, "{body}");

    // The version, likewise: signed parameter only, one value, the one served.
    let (status, body) = v1(&tb, &get, &[("x-acs-version", "2019-01-01")]).await;
    assert_eq!(
        (status, code(&body)),
        (400, "ParameterFieldCheckFailed"),
        "{body}"
    );
    let old = [
        ("Action", "GetCaCertificate"),
        ("MqttInstanceId", instance.as_str()),
        ("Sn", ca_sn.as_str()),
        ("Version", "2019-01-01"),
    ];
    let (status, body) = v1(&tb, &old, &[]).await;
    assert_eq!((status, code(&body)), (400, "InvalidVersion"), "{body}");
    let (status, body) = v1(&tb, &get[..3], &[]).await;
    assert_eq!(
        (status, code(&body)),
        (400, "ParameterFieldCheckFailed"),
        "{body}"
    );
    assert!(
        body["Message"].as_str().unwrap().contains("Version"),
        "{body}"
    );

    // Two signed actions are ambiguous.
    let twice = [
        ("Action", "GetCaCertificate"),
        ("Action", "DeleteCaCertificate"),
        ("MqttInstanceId", instance.as_str()),
        ("Sn", ca_sn.as_str()),
        VERSION,
    ];
    let (status, body) = v1(&tb, &twice, &[]).await;
    assert_eq!(
        (status, code(&body)),
        (400, "ParameterFieldCheckFailed"),
        "{body}"
    );
    assert!(
        tb.broker.registry().ca(&ca.sn).is_some(),
        "the CA was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_runs_only_its_signed_action() {
    let ca = support::Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let instance = tb.instance();
    let ca_sn = ca.sn.to_string();
    let query = [
        ("MqttInstanceId", instance.as_str()),
        ("Sn", ca_sn.as_str()),
    ];
    let get = ("x-acs-action", "GetCaCertificate");

    let (status, body) = v3(&tb, &query, &[get, V3_VERSION], &[]).await;
    assert_eq!(status, 200, "{body}");

    // The action header left out of SignedHeaders: refused, even though the
    // request is otherwise correctly signed.
    let (status, body) = v3(
        &tb,
        &query,
        &[V3_VERSION],
        &[("x-acs-action", "DeleteCaCertificate")],
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, "IncompleteSignature"),
        "{body}"
    );
    assert!(
        body["Message"].as_str().unwrap().contains("x-acs-action"),
        "{body}"
    );
    // So is a version header outside the signature.
    let (status, body) = v3(&tb, &query, &[get], &[V3_VERSION]).await;
    assert_eq!(
        (status, code(&body)),
        (400, "IncompleteSignature"),
        "{body}"
    );

    // An Action parameter that disagrees with the signed header.
    let with_param = [
        ("Action", "DeleteCaCertificate"),
        ("MqttInstanceId", instance.as_str()),
        ("Sn", ca_sn.as_str()),
    ];
    let (status, body) = v3(&tb, &with_param, &[get, V3_VERSION], &[]).await;
    assert_eq!(
        (status, code(&body)),
        (400, "ParameterFieldCheckFailed"),
        "{body}"
    );
    assert!(
        tb.broker.registry().ca(&ca.sn).is_some(),
        "the CA was deleted"
    );

    // A version parameter that disagrees, and a version not served.
    let with_version = [
        ("MqttInstanceId", instance.as_str()),
        ("Sn", ca_sn.as_str()),
        ("Version", "2019-01-01"),
    ];
    let (status, body) = v3(&tb, &with_version, &[get, V3_VERSION], &[]).await;
    assert_eq!(
        (status, code(&body)),
        (400, "ParameterFieldCheckFailed"),
        "{body}"
    );
    let (status, body) = v3(&tb, &query, &[get, ("x-acs-version", "2019-01-01")], &[]).await;
    assert_eq!((status, code(&body)), (400, "InvalidVersion"), "{body}");

    // A form body whose content type is not signed: dropping that header
    // on the path would drop the body's parameters with it.
    let form = ("content-type", "application/x-www-form-urlencoded");
    let body = format!("Sn={ca_sn}");
    let instance_only = [("MqttInstanceId", instance.as_str())];
    let (status, body_answer) =
        v3_body(&tb, &instance_only, &[get, V3_VERSION], &[form], &body).await;
    assert_eq!(
        (status, code(&body_answer)),
        (400, "IncompleteSignature"),
        "{body_answer}"
    );
    let (status, body_answer) =
        v3_body(&tb, &instance_only, &[get, V3_VERSION, form], &[], &body).await;
    assert_eq!(status, 200, "{body_answer}");
}
