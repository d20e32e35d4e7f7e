"""Drives a real `certmq serve` with the official Alibaba Cloud SDKs.

The current SDK (alibabacloud-onsmqtt20200420, signature V3) and the legacy
core SDK (aliyun-python-sdk-core's CommonRequest, signature V1) take turns
through the whole certificate lifecycle, with real devices (the mosquitto
clients) connecting in between, then reach every documented error code.
Run by `tests/integration/sdk.rs`, which starts the brokers and passes:

  CERTMQ_BIN, CERTMQ_WORKDIR, CERTMQ_ENDPOINT, CERTMQ_STANDARD_ENDPOINT,
  CERTMQ_MQTT_PORT, CERTMQ_SERVER_CA, CERTMQ_INSTANCE,
  CERTMQ_KEYS (JSON: {"admin": [id, secret], "readonly": [...], "other": [...]}),
  and for an admin API over HTTPS: CERTMQ_ADMIN_PROTOCOL=https and
  CERTMQ_ADMIN_CA (the CA file of its certificate).

Over HTTPS each SDK is given the CA the way its users would: the V3 SDK's
`Config(protocol="https", ca=PATH)`, the V1 core SDK's
`AcsClient(..., verify=PATH)` with `CommonRequest.set_protocol_type(protocol_type.HTTPS)`
(the SDK's constant: the string "https" is silently taken as plain HTTP).
(Environment variables do not reach the V3 SDK: it calls requests'
`Session.send`, which ignores REQUESTS_CA_BUNDLE; the V1 SDK reads
ALIBABA_CLOUD_CA_BUNDLE, when `verify` is not given.)
"""

import json
import os
import subprocess
import sys
import time

from alibabacloud_onsmqtt20200420 import models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_openapi.utils import Utils as V3Utils
from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.http import protocol_type
from aliyunsdkcore.request import CommonRequest
from aliyunsdkcore.utils import parameter_helper

BIN = os.environ["CERTMQ_BIN"]
WORK = os.environ["CERTMQ_WORKDIR"]
ENDPOINT = os.environ["CERTMQ_ENDPOINT"]
STANDARD_ENDPOINT = os.environ["CERTMQ_STANDARD_ENDPOINT"]
MQTT_PORT = os.environ["CERTMQ_MQTT_PORT"]
SERVER_CA = os.environ["CERTMQ_SERVER_CA"]
INSTANCE = os.environ["CERTMQ_INSTANCE"]
KEYS = json.loads(os.environ["CERTMQ_KEYS"])
PROTOCOL = os.environ.get("CERTMQ_ADMIN_PROTOCOL", "http")
ADMIN_CA = os.environ.get("CERTMQ_ADMIN_CA") or None


def log(message):
    print(f"[sdk] {message}", flush=True)


def v3_config(ak, secret, endpoint=ENDPOINT, ca=ADMIN_CA):
    return Config(access_key_id=ak, access_key_secret=secret, endpoint=endpoint, protocol=PROTOCOL, ca=ca)


def v3_client(key="admin", endpoint=ENDPOINT):
    ak, secret = KEYS[key]
    return Client(v3_config(ak, secret, endpoint))


def v1_acs(ak, secret, ca=ADMIN_CA):
    # No automatic retries: every call here must be answered once, as is.
    return AcsClient(ak, secret, "cn-hangzhou", auto_retry=False, verify=ca)


def v1_client(key="admin"):
    return v1_acs(*KEYS[key])


def v1_call(action, params, key="admin", client=None):
    request = CommonRequest(domain=ENDPOINT, version="2020-04-20", action_name=action)
    # The SDK compares with `is`: pass its own constant, not an equal string.
    request.set_protocol_type(protocol_type.HTTPS if PROTOCOL == "https" else protocol_type.HTTP)
    request.set_method("POST")
    for name, value in params.items():
        request.add_query_param(name, value)
    answer = (client or v1_client(key)).do_action_with_exception(request)
    return json.loads(answer)


def expect_v3_error(call, status, code):
    try:
        call()
    except Exception as e:  # the SDK raises its own exception types
        got = (getattr(e, "status_code", None) or getattr(e, "statusCode", None), getattr(e, "code", None))
        assert got == (status, code), f"expected {status} {code}, got {got}: {e}"
        log(f"V3 error as expected: {status} {code}")
        return
    raise AssertionError(f"expected {status} {code}, the call succeeded")


def expect_v1_error(call, status, code):
    try:
        call()
    except ServerException as e:
        got = (e.get_http_status(), e.get_error_code())
        assert got == (status, code), f"expected {status} {code}, got {got}: {e}"
        log(f"V1 error as expected: {status} {code}")
        return
    raise AssertionError(f"expected {status} {code}, the call succeeded")


def certmq(*args):
    subprocess.run([BIN, *args], check=True, cwd=WORK, stdout=subprocess.DEVNULL)


def mosquitto(program, device, *args):
    return [
        program, "-h", "localhost", "-p", MQTT_PORT, "--cafile", SERVER_CA,
        "--cert", f"{WORK}/{device}.pem", "--key", f"{WORK}/{device}.key", *args,
    ]


def subscriber(device, client_id):
    """A long-lived MQTT 5 session of `device`."""
    proc = subprocess.Popen(
        mosquitto("mosquitto_sub", device, "-V", "mqttv5", "-i", client_id, "-t", f"sdk/{client_id}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not v3().query_session_by_client_id(
            models.QuerySessionByClientIdRequest(instance_id=INSTANCE, client_id=client_id)).body.online_status:
        assert proc.poll() is None, f"{client_id} could not connect"
        assert time.time() < deadline, f"{client_id} never came online"
        time.sleep(0.05)
    return proc


def ended(proc, what):
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{what}: the session is still open")
    log(f"{what}: session closed")


def publish_ok(device):
    return subprocess.run(mosquitto("mosquitto_pub", device, "-t", "sdk/x", "-m", "hi"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def v3():
    return v3_client()


def lifecycle():
    # GetRegisterCode, both SDKs.
    code = v3().get_register_code(models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE)).body.register_code
    assert v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE})["RegisterCode"] == code
    log(f"GetRegisterCode: {code}")

    # A CA, its verification certificate, two devices.
    certmq("pki", "create-ca", "--cn", "SDK fleet CA", "--out-cert", "ca.pem", "--out-key", "ca.key")
    certmq("pki", "verification-cert", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--code", code,
           "--out-cert", "verify.pem", "--out-key", "verify.key")
    for device in ("meter-1", "meter-2"):
        certmq("pki", "issue-device", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--cn", device,
               "--out-cert", f"{device}.pem", "--out-key", f"{device}.key")
    ca_pem = open(f"{WORK}/ca.pem").read()
    verify_pem = open(f"{WORK}/verify.pem").read()

    sn = v3().register_ca_certificate(models.RegisterCaCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_name="SDK fleet", ca_content=ca_pem,
        verification_content=verify_pem)).body.sn
    log(f"RegisterCaCertificate: Sn {sn}")
    data = v1_call("GetCaCertificate", {"MqttInstanceId": INSTANCE, "Sn": sn})["Data"]
    assert data["Status"] == "1" and data["CaName"] == "SDK fleet" and data["RegistrationCode"] == code, data
    listed = v3().list_ca_certificate(models.ListCaCertificateRequest(
        mqtt_instance_id=INSTANCE, page_no="1", page_size="10")).body.data
    assert listed.total >= 1 and any(vo.sn == sn for vo in listed.ca_certificate_vos)
    assert v1_call("ListCaCertificate", {"MqttInstanceId": INSTANCE, "PageNo": "1", "PageSize": "10"})["Data"]["Total"] >= 1
    log("GetCaCertificate / ListCaCertificate: registered, Status 1")

    # A device of that CA connects and is registered.
    meter1 = subscriber("meter-1", "meter-1")
    devices = v3().list_device_certificate_by_ca_sn(models.ListDeviceCertificateByCaSnRequest(
        mqtt_instance_id=INSTANCE, ca_sn=sn, page_no="1", page_size="10")).body.data
    assert devices.total == 1, devices
    device_sn = devices.device_certificate_vos[0].device_sn
    assert devices.device_certificate_vos[0].status == "1"
    got = v1_call("GetDeviceCertificate", {"MqttInstanceId": INSTANCE, "CaSn": sn, "DeviceSn": device_sn})["Data"]
    assert got["Status"] == "1" and got["DeviceName"] == "meter-1", got
    assert int(got["ValidEnd"]) > int(got["ValidBegin"]) > 1_600_000_000_000
    v1_listed = v1_call("ListDeviceCertificateByCaSn", {"MqttInstanceId": INSTANCE, "CaSn": sn})["Data"]
    assert v1_listed["Total"] == 1
    log(f"device auto-registered: DeviceSn {device_sn}, Status 1")

    # InactivateDeviceCertificate drops the live session, refuses new ones.
    answer = v3().inactivate_device_certificate(models.InactivateDeviceCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_sn=sn, device_sn=device_sn)).body
    assert answer.device_sn == device_sn
    ended(meter1, "InactivateDeviceCertificate")
    status = v3().get_device_certificate(models.GetDeviceCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_sn=sn, device_sn=device_sn)).body.data.status
    assert status == "0", status
    assert not publish_ok("meter-1"), "an inactive device published"
    log("GetDeviceCertificate: Status 0; the device is refused")

    v1_call("ActiveDeviceCertificate", {"MqttInstanceId": INSTANCE, "CaSn": sn, "DeviceSn": device_sn})
    assert publish_ok("meter-1"), "the re-activated device could not publish"
    log("ActiveDeviceCertificate (V1): the device is back")

    # The same round trip with the SDKs' roles swapped.
    meter1 = subscriber("meter-1", "meter-1")
    answer = v1_call("InactivateDeviceCertificate", {"MqttInstanceId": INSTANCE, "CaSn": sn, "DeviceSn": device_sn})
    assert answer["DeviceSn"] == device_sn, answer
    ended(meter1, "InactivateDeviceCertificate (V1)")
    assert not publish_ok("meter-1"), "an inactive device published"
    v3().active_device_certificate(models.ActiveDeviceCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_sn=sn, device_sn=device_sn))
    assert publish_ok("meter-1")
    log("InactivateDeviceCertificate (V1) / ActiveDeviceCertificate (V3): same outcome")

    # InactivateCaCertificate drops every session of the CA.
    sessions = [subscriber("meter-1", "m1-a"), subscriber("meter-2", "m2-a")]
    online = v3().batch_query_session_by_client_ids(models.BatchQuerySessionByClientIdsRequest(
        instance_id=INSTANCE, client_id_list=["m1-a", "m2-a", "nobody"])).body.online_status_list
    assert [(s.client_id, s.online_status) for s in online] == [("m1-a", True), ("m2-a", True), ("nobody", False)]
    v1_online = v1_call("BatchQuerySessionByClientIds",
                        {"InstanceId": INSTANCE, "ClientIdList.1": "m1-a", "ClientIdList.2": "nobody"})
    assert [(s["ClientId"], s["OnlineStatus"]) for s in v1_online["OnlineStatusList"]] == [("m1-a", True), ("nobody", False)]
    v1_call("InactivateCaCertificate", {"MqttInstanceId": INSTANCE, "Sn": sn})
    for proc in sessions:
        ended(proc, "InactivateCaCertificate")
    assert not publish_ok("meter-2")
    v3().active_ca_certificate(models.ActiveCaCertificateRequest(mqtt_instance_id=INSTANCE, sn=sn))
    assert publish_ok("meter-2")
    v3().inactivate_ca_certificate(models.InactivateCaCertificateRequest(mqtt_instance_id=INSTANCE, sn=sn))
    assert not publish_ok("meter-2")
    v1_call("ActiveCaCertificate", {"MqttInstanceId": INSTANCE, "Sn": sn})
    log("Inactivate/ActiveCaCertificate: all sessions dropped, then admitted again")

    # Session operations.
    proc = subscriber("meter-2", "closer")
    assert v1_call("QuerySessionByClientId", {"InstanceId": INSTANCE, "ClientId": "closer"})["OnlineStatus"] is True
    closed = v3().close_connection(models.CloseConnectionRequest(instance_id=INSTANCE, client_id="closer")).body
    assert closed.success is True and closed.code == 200, closed
    ended(proc, "CloseConnection")
    proc = subscriber("meter-2", "closer")
    v1_call("CloseConnection", {"InstanceId": INSTANCE, "ClientId": "closer"})
    ended(proc, "CloseConnection (V1)")

    # Listing and deletion.
    everyone = v3().list_device_certificate(models.ListDeviceCertificateRequest(
        mqtt_instance_id=INSTANCE, page_no="1", page_size="100")).body.data
    assert everyone.total == 2, everyone
    assert v1_call("ListDeviceCertificate", {"MqttInstanceId": INSTANCE, "PageNo": "1", "PageSize": "1"})["Data"]["Total"] == 2
    proc = subscriber("meter-1", "deleted")
    v3().delete_device_certificate(models.DeleteDeviceCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_sn=sn, device_sn=device_sn))
    ended(proc, "DeleteDeviceCertificate")
    expect_v3_error(lambda: v3().get_device_certificate(models.GetDeviceCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_sn=sn, device_sn=device_sn)), 500, "FindDeviceBySnError")
    v1_call("DeleteDeviceCertificate", {"MqttInstanceId": INSTANCE, "CaSn": sn,
                                        "DeviceSn": everyone.device_certificate_vos[1].device_sn})
    proc = subscriber("meter-2", "last")
    v1_call("DeleteCaCertificate", {"MqttInstanceId": INSTANCE, "Sn": sn})
    ended(proc, "DeleteCaCertificate")
    expect_v1_error(lambda: v1_call("GetCaCertificate", {"MqttInstanceId": INSTANCE, "Sn": sn}), 500, "FindCaBySnError")
    assert not publish_ok("meter-2")

    # V3's DeleteCaCertificate, on a second registration.
    sn = v1_call("RegisterCaCertificate", {"MqttInstanceId": INSTANCE, "CaName": "again", "CaContent": ca_pem,
                                           "VerificationContent": verify_pem})["Sn"]
    v3().delete_ca_certificate(models.DeleteCaCertificateRequest(mqtt_instance_id=INSTANCE, sn=sn))
    log("Delete*: records gone, sessions dropped")
    crl_import(ca_pem, verify_pem)
    return sn

def openssl_crl(revoked_certs, name):
    """A CRL of ca.pem listing the certificates `revoked_certs`, made with
    `openssl ca -gencrl` as a PKI would."""
    index = ""
    for cert in revoked_certs:
        serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", f"{WORK}/{cert}.pem"],
                                check=True, capture_output=True, text=True).stdout.strip().split("=")[1]
        index += f"R\t351231000000Z\t260101000000Z\t{serial}\tunknown\t/CN={cert}\n"
    with open(f"{WORK}/index.txt", "w") as f:
        f.write(index)
    with open(f"{WORK}/crlnumber", "w") as f:
        f.write("01\n")
    with open(f"{WORK}/crl.cnf", "w") as f:
        f.write("[ ca ]\ndefault_ca = test\n[ test ]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
                "default_md = sha256\ndefault_crl_days = 7\n")
    subprocess.run(["openssl", "ca", "-gencrl", "-batch", "-config", "crl.cnf", "-keyfile", "ca.key",
                    "-cert", "ca.pem", "-out", f"{name}.pem"], check=True, cwd=WORK, capture_output=True)
    return open(f"{WORK}/{name}.pem").read()


def v3_generic(action, query, body):
    """A V3 call of an action the SDK has no method for (certmq's
    extensions), through the SDK's generic `call_api`, as its users would."""
    from alibabacloud_tea_openapi import models as open_api_models
    from alibabacloud_tea_util import models as util_models
    params = open_api_models.Params(action=action, version="2020-04-20", protocol="HTTPS", pathname="/",
                                    method="POST", auth_type="AK", style="RPC", req_body_type="formData",
                                    body_type="json")
    request = open_api_models.OpenApiRequest(query=query, body=body)
    return v3().call_api(params, request, util_models.RuntimeOptions())["body"]


def crl_import(ca_pem, verify_pem):
    """ImportCrl (a certmq extension) with both SDKs: a CRL listing three
    connected devices and two never seen cuts the three off and blocks the
    two; importing it again changes nothing."""
    sn = v3().register_ca_certificate(models.RegisterCaCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_name="CRL fleet", ca_content=ca_pem,
        verification_content=verify_pem)).body.sn
    for device in ("meter-3", "ghost-1", "ghost-2"):
        certmq("pki", "issue-device", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--cn", device,
               "--out-cert", f"{device}.pem", "--out-key", f"{device}.key")
    sessions = [subscriber(d, f"crl-{d}") for d in ("meter-1", "meter-2", "meter-3")]
    crl = openssl_crl(["meter-1", "meter-2", "meter-3", "ghost-1", "ghost-2"], "fleet-crl")
    answer = v3_generic("ImportCrl", {"MqttInstanceId": INSTANCE}, {"CrlContent": crl})
    got = (answer["CaSn"], answer["Inactivated"], answer["Blocked"], answer["AlreadyInactive"])
    assert got == (sn, 3, 2, 0), answer
    for proc in sessions:
        # Closed before the answer: already ended, or ending now.
        ended(proc, "ImportCrl (V3, generic call_api)")
    for device in ("meter-1", "ghost-1", "ghost-2"):
        assert not publish_ok(device), f"{device} is listed in the CRL but could publish"
    request = CommonRequest(domain=ENDPOINT, version="2020-04-20", action_name="ImportCrl")
    request.set_protocol_type(protocol_type.HTTPS if PROTOCOL == "https" else protocol_type.HTTP)
    request.set_method("POST")
    request.add_query_param("MqttInstanceId", INSTANCE)
    request.add_body_params("CrlContent", crl)
    again = json.loads(v1_client().do_action_with_exception(request))
    assert (again["Inactivated"], again["Blocked"], again["AlreadyInactive"]) == (0, 0, 5), again
    expect_v1_error(lambda: v1_call("ImportCrl", {"MqttInstanceId": INSTANCE, "CrlContent": "not a CRL"}),
                    400, "ParameterFieldCheckFailed")
    v1_call("DeleteCaCertificate", {"MqttInstanceId": INSTANCE, "Sn": sn})
    log("ImportCrl: V3 (call_api) cut 3 sessions off and blocked 2 serials; V1 (CommonRequest) again: no-op")


def errors(sn):
    device = {"MqttInstanceId": INSTANCE, "CaSn": sn, "DeviceSn": "0BADC0DE"}
    request = models.InactivateDeviceCertificateRequest

    expect_v3_error(lambda: v3().inactivate_device_certificate(request(mqtt_instance_id=INSTANCE, ca_sn=sn)),
                    400, "ParameterFieldCheckFailed")
    expect_v1_error(lambda: v1_call("InactivateDeviceCertificate", {"MqttInstanceId": INSTANCE, "CaSn": sn}),
                    400, "ParameterFieldCheckFailed")
    expect_v3_error(lambda: v3().inactivate_device_certificate(request(
        mqtt_instance_id="mqtt-nowhere", ca_sn=sn, device_sn="0BADC0DE")), 500, "MqttInstanceNotFound")
    expect_v1_error(lambda: v1_call("InactivateDeviceCertificate", dict(device, MqttInstanceId="mqtt-nowhere")),
                    500, "MqttInstanceNotFound")
    expect_v3_error(lambda: v3().inactivate_device_certificate(request(
        mqtt_instance_id=INSTANCE, ca_sn=sn, device_sn="0BADC0DE")), 500, "FindDeviceBySnError")
    expect_v1_error(lambda: v1_call("GetDeviceCertificate", device), 500, "FindDeviceBySnError")
    expect_v3_error(lambda: v3().get_ca_certificate(models.GetCaCertificateRequest(
        mqtt_instance_id=INSTANCE, sn="0BADC0DE")), 500, "FindCaBySnError")
    expect_v3_error(lambda: v3_client("readonly").inactivate_device_certificate(request(
        mqtt_instance_id=INSTANCE, ca_sn=sn, device_sn="0BADC0DE")), 403, "PermissionCheckFailed")
    expect_v1_error(lambda: v1_call("DeleteCaCertificate", {"MqttInstanceId": INSTANCE, "Sn": sn}, key="readonly"),
                    403, "PermissionCheckFailed")
    expect_v3_error(lambda: v3_client("other").get_register_code(models.GetRegisterCodeRequest(
        mqtt_instance_id=INSTANCE)), 403, "MqttOwnerCheckError")
    expect_v1_error(lambda: v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE}, key="other"),
                    403, "MqttOwnerCheckError")
    expect_v3_error(lambda: v3_client(endpoint=STANDARD_ENDPOINT).get_register_code(models.GetRegisterCodeRequest(
        mqtt_instance_id=INSTANCE)), 400, "InstancePermissionCheckFailed")

    # The rate limit (configured low for ListCaCertificate in this test).
    def burst():
        for _ in range(20):
            v3().list_ca_certificate(models.ListCaCertificateRequest(mqtt_instance_id=INSTANCE))
    expect_v3_error(burst, 400, "Throttling.User")

    # Wrong secret, replayed nonce, stale timestamp.
    wrong = Client(v3_config(KEYS["admin"][0], "wrong-secret-value"))
    expect_v3_error(lambda: wrong.get_register_code(models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE)),
                    400, "SignatureDoesNotMatch")
    expect_v1_error(lambda: v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE},
                                    client=v1_acs(KEYS["admin"][0], "wrong-secret-value")),
                    400, "SignatureDoesNotMatch")

    original_nonce, original_uuid = V3Utils.get_nonce, parameter_helper.get_uuid
    V3Utils.get_nonce = staticmethod(lambda: "replayed-nonce-v3")
    parameter_helper.get_uuid = lambda: "replayed-nonce-v1"
    try:
        v3().get_register_code(models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE))
        expect_v3_error(lambda: v3().get_register_code(models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE)),
                        400, "SignatureNonceUsed")
        v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE})
        expect_v1_error(lambda: v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE}), 400, "SignatureNonceUsed")
    finally:
        V3Utils.get_nonce, parameter_helper.get_uuid = original_nonce, original_uuid

    stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 20 * 60))
    original_ts, original_date = V3Utils.get_timestamp, parameter_helper.get_iso_8061_date
    V3Utils.get_timestamp = staticmethod(lambda: stale)
    parameter_helper.get_iso_8061_date = lambda: stale
    try:
        expect_v3_error(lambda: v3().get_register_code(models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE)),
                        400, "InvalidTimeStamp.Expired")
        expect_v1_error(lambda: v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE}),
                        400, "InvalidTimeStamp.Expired")
    finally:
        V3Utils.get_timestamp, parameter_helper.get_iso_8061_date = original_ts, original_date


def https_checks():
    """Over HTTPS, the CA given is what makes the calls work: without it
    (the SDKs' default trust store) both SDKs refuse the certificate."""
    get_code = models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE)
    # First, while no connection is pooled: the V3 SDK shares one session
    # (and TLS context) per endpoint, to which a CA once given stays added.
    untrusting = Client(v3_config(*KEYS["admin"], ca=None))
    try:
        untrusting.get_register_code(get_code)
    except Exception as e:  # the SDK wraps requests' SSLError
        assert "CERTIFICATE_VERIFY_FAILED" in str(e) or "SSL" in str(e), e
        log(f"V3 without the CA: refused ({type(e).__name__})")
    else:
        raise AssertionError("the V3 SDK accepted a certificate it was not told to trust")
    try:
        v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE}, client=v1_acs(*KEYS["admin"], ca=None))
    except ClientException as e:
        assert "SSL" in str(e) or "CERTIFICATE_VERIFY_FAILED" in str(e), e
        log(f"V1 without the CA: refused ({e.get_error_code()})")
    else:
        raise AssertionError("the V1 SDK accepted a certificate it was not told to trust")
    assert v3().get_register_code(get_code).body.register_code
    assert v1_call("GetRegisterCode", {"MqttInstanceId": INSTANCE})["RegisterCode"]
    log(f"HTTPS: both SDKs verify the admin API's certificate against {ADMIN_CA}")


def main():
    log(f"admin API over {PROTOCOL}")
    if PROTOCOL == "https":
        https_checks()
    sn = lifecycle()
    errors(sn)
    log("all SDK checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"[sdk] FAILED: {e}", flush=True)
        sys.exit(1)
