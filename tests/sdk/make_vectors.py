"""Records signature test vectors from the official SDKs' own signing code.

Each SDK sends real requests to a local HTTP server that records them
exactly as they arrive (method, path, query, headers, body). The Rust test
`tests/integration/signatures.rs` recomputes every signature from those
recordings with certmq's implementation and must find the SDK's value.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install -r tests/sdk/requirements.txt
    /tmp/v/bin/python tests/sdk/make_vectors.py > tests/fixtures/signatures.json
"""

import http.server
import json
import threading
import urllib.parse

AK = "LTAI5tCertmqTestVector01"
SECRET = "Xy9s+Secret/Value=With*Specials~01"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB+zCCAaGgAwIBAgIU/abc==\n-----END CERTIFICATE-----\n"

recorded = []


class Recorder(http.server.BaseHTTPRequestHandler):
    def _handle(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        parsed = urllib.parse.urlsplit(self.path)
        recorded.append({
            "method": self.command,
            "path": parsed.path,
            "query": urllib.parse.parse_qsl(parsed.query, keep_blank_values=True),
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body,
        })
        answer = json.dumps({"RequestId": "00000000-0000-0000-0000-000000000000"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json;charset=utf-8")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = _handle
    do_POST = _handle

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = "127.0.0.1:%d" % server.server_address[1]
    vectors = []

    # V3: the current SDK.
    from alibabacloud_onsmqtt20200420.client import Client
    from alibabacloud_onsmqtt20200420 import models
    from alibabacloud_tea_openapi.models import Config

    client = Client(Config(access_key_id=AK, access_key_secret=SECRET, endpoint=endpoint, protocol="http"))
    client.inactivate_device_certificate(models.InactivateDeviceCertificateRequest(
        mqtt_instance_id="mqtt-certmq-local", ca_sn="00F1A2", device_sn="7269004887"))
    client.register_ca_certificate(models.RegisterCaCertificateRequest(
        mqtt_instance_id="mqtt-certmq-local", ca_name="Fleet CA * (east) ~ 1", ca_content=PEM,
        verification_content=PEM))
    client.batch_query_session_by_client_ids(models.BatchQuerySessionByClientIdsRequest(
        instance_id="mqtt-certmq-local", client_id_list=["dev 1", "dev/2"]))
    for request in recorded:
        vectors.append(dict(scheme="v3", secret=SECRET, **request))
    recorded.clear()

    # V1: the legacy core SDK's CommonRequest, query and form parameters.
    from aliyunsdkcore.client import AcsClient
    from aliyunsdkcore.request import CommonRequest

    legacy = AcsClient(AK, SECRET, "cn-hangzhou")
    for method in ("POST", "GET"):
        request = CommonRequest(domain=endpoint, version="2020-04-20", action_name="InactivateDeviceCertificate")
        request.set_protocol_type("http")
        request.set_method(method)
        request.add_query_param("MqttInstanceId", "mqtt-certmq-local")
        request.add_query_param("CaSn", "00F1A2")
        request.add_query_param("DeviceSn", "72 69*00~48/87")
        if method == "POST":
            request.add_body_params("CaName", "body param + spaces")
        legacy.do_action_with_exception(request)
    for request in recorded:
        vectors.append(dict(scheme="v1", secret=SECRET, **request))

    server.shutdown()
    print(json.dumps(vectors, indent=1))


if __name__ == "__main__":
    main()
