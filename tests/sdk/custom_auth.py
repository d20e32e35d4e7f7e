"""Custom topic permissions through the official V3 SDK
(alibabacloud-onsmqtt20200420): AddCustomAuthPermission,
QueryCustomAuthPermission, UpdateCustomAuthPermission,
DeleteCustomAuthPermission, against a `certmq serve` on the embedded
policies (every device in its own namespace, devices/<CN>/#), with a real
device (the mosquitto clients).

Run by `tests/integration/sdk.rs` in two phases, the broker restarted in
between (the environment as for sdk_flow.py):

  before: register a CA, connect meter-1 subscribed to its own command
          topic, add a DENY SUB permission for the device (DEVICE identity)
          on its namespace: the live subscription is gone when the call
          answers, a new SUBSCRIBE is refused, Query lists the permission;
          and every missing or invalid parameter gets ParameterFieldCheckFailed.
  after:  the permission survived the restart (listed, still enforced);
          Update and Delete; after the Delete the device may subscribe
          again.
"""

import json
import os
import subprocess
import sys
import time

from alibabacloud_onsmqtt20200420 import models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi.models import Config

BIN = os.environ["CERTMQ_BIN"]
WORK = os.environ["CERTMQ_WORKDIR"]
ENDPOINT = os.environ["CERTMQ_ENDPOINT"]
MQTT_PORT = os.environ["CERTMQ_MQTT_PORT"]
SERVER_CA = os.environ["CERTMQ_SERVER_CA"]
INSTANCE = os.environ["CERTMQ_INSTANCE"]
KEYS = json.loads(os.environ["CERTMQ_KEYS"])
STATE = os.path.join(WORK, "custom-auth-state.json")
TOPIC = "devices/meter-1/#"


def log(message):
    print(f"[sdk-custom-auth] {message}", flush=True)


def v3():
    ak, secret = KEYS["admin"]
    return Client(Config(access_key_id=ak, access_key_secret=secret, endpoint=ENDPOINT, protocol="http"))


def certmq(*args):
    subprocess.run([BIN, *args], check=True, cwd=WORK, stdout=subprocess.DEVNULL)


def mosquitto(program, *args):
    return [
        program, "-h", "localhost", "-p", MQTT_PORT, "--cafile", SERVER_CA,
        "--cert", f"{WORK}/meter-1.pem", "--key", f"{WORK}/meter-1.key", "-V", "mqttv5", *args,
    ]


def online(client_id):
    return v3().query_session_by_client_id(
        models.QuerySessionByClientIdRequest(instance_id=INSTANCE, client_id=client_id)).body.online_status


def subscriber(client_id, topic, *extra):
    proc = subprocess.Popen(mosquitto("mosquitto_sub", "-i", client_id, "-t", topic, *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while not online(client_id):
        assert proc.poll() is None, f"{client_id} could not connect: {proc.communicate()}"
        assert time.time() < deadline, f"{client_id} never came online"
        time.sleep(0.05)
    return proc


def subscribe_refused(topic, wait=10):
    """A new SUBSCRIBE of meter-1 to `topic` gets a refusal in its SUBACK
    (else it waits `wait` seconds for a message)."""
    done = subprocess.run(mosquitto("mosquitto_sub", "-i", "meter-1-probe", "-t", topic, "-C", "1", "-W", str(wait)),
                          capture_output=True, text=True, timeout=30)
    return "denied" in done.stderr, done.stderr.strip()


def receives(topic):
    """meter-1 subscribes to `topic` and receives what it publishes there."""
    proc = subscriber("meter-1-probe", topic, "-C", "1")
    deadline = time.time() + 10
    try:
        while True:
            subprocess.run(mosquitto("mosquitto_pub", "-i", "meter-1-pub", "-t", topic, "-m", "hello", "-q", "1"),
                           check=True, capture_output=True, timeout=30)
            try:
                out, _ = proc.communicate(timeout=0.5)
                return "hello" in out
            except subprocess.TimeoutExpired:
                assert time.time() < deadline, "the message never arrived"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def permission(identity, action="SUB", effect="DENY"):
    return dict(instance_id=INSTANCE, identity_type="DEVICE", identity=identity, topic=TOPIC,
                permit_action=action, effect=effect)


def listed(identity):
    data = v3().query_custom_auth_permission(models.QueryCustomAuthPermissionRequest(
        instance_id=INSTANCE, size=100, next_token="", identity=identity, identity_type="DEVICE")).body.data
    return [(r.identity_type, r.identity, r.topic, r.permit_action, r.effect) for r in data.results]


def expect_error(call, status, code, needle):
    try:
        call()
    except Exception as e:  # the SDK raises its own exception types
        got = (getattr(e, "status_code", None) or getattr(e, "statusCode", None), getattr(e, "code", None))
        assert got == (status, code), f"expected {status} {code}, got {got}: {e}"
        assert needle in str(e), f"expected {needle!r} in the message: {e}"
        log(f"error as expected: {code} ({needle})")
        return
    raise AssertionError(f"expected {status} {code}, the call succeeded")


def before():
    code = v3().get_register_code(models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE)).body.register_code
    certmq("pki", "create-ca", "--cn", "custom auth CA", "--out-cert", "ca.pem", "--out-key", "ca.key")
    certmq("pki", "verification-cert", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--code", code,
           "--out-cert", "verify.pem", "--out-key", "verify.key")
    certmq("pki", "issue-device", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--cn", "meter-1",
           "--out-cert", "meter-1.pem", "--out-key", "meter-1.key")
    ca_sn = v3().register_ca_certificate(models.RegisterCaCertificateRequest(
        mqtt_instance_id=INSTANCE, ca_name="custom auth", ca_content=open(f"{WORK}/ca.pem").read(),
        verification_content=open(f"{WORK}/verify.pem").read())).body.sn

    live = subscriber("meter-1", "devices/meter-1/cmd")
    device_sn = v3().list_device_certificate_by_ca_sn(models.ListDeviceCertificateByCaSnRequest(
        mqtt_instance_id=INSTANCE, ca_sn=ca_sn, page_no="1", page_size="10")).body.data.device_certificate_vos[0].device_sn
    identity = f"{ca_sn}:{device_sn}"
    json.dump({"identity": identity}, open(STATE, "w"))
    assert receives("devices/meter-1/status"), "the own namespace does not work before the permission"

    answer = v3().add_custom_auth_permission(models.AddCustomAuthPermissionRequest(**permission(identity))).body
    assert (answer.code, answer.success, answer.message) == (200, True, "operation success."), answer
    # Before the answer: the session holding the now denied subscription is gone.
    assert not online("meter-1"), "the live subscription outlived the answer"
    live.wait(timeout=10)
    log("AddCustomAuthPermission DENY SUB: the live subscription was gone when the call answered")
    refused, stderr = subscribe_refused("devices/meter-1/cmd")
    assert refused, f"a new SUBSCRIBE was not refused: {stderr}"
    log(f"a new SUBSCRIBE is refused ({stderr})")
    assert listed(identity) == [("DEVICE", identity, TOPIC, "SUB", "DENY")], listed(identity)
    log("QueryCustomAuthPermission lists it")

    # Missing and invalid parameters.
    add = lambda **kw: v3().add_custom_auth_permission(models.AddCustomAuthPermissionRequest(**kw))
    full = permission(identity)
    for name in ("identity_type", "identity", "topic", "permit_action", "effect"):
        partial = {k: v for k, v in full.items() if k != name}
        api_name = "".join(word.title() for word in name.split("_"))
        expect_error(lambda: add(**partial), 400, "ParameterFieldCheckFailed", f"parameter {api_name} is missing")
    expect_error(lambda: add(**dict(full, identity_type="USER")), 400, "ParameterFieldCheckFailed",
                 "USER is not supported")
    expect_error(lambda: add(**dict(full, identity="not-a-device")), 400, "ParameterFieldCheckFailed",
                 "<CaSn>:<DeviceSn>")
    expect_error(lambda: add(**dict(full, topic="devices/#/x")), 400, "ParameterFieldCheckFailed", "Topic")
    expect_error(lambda: add(**dict(full, permit_action="WRITE")), 400, "ParameterFieldCheckFailed",
                 "PUB, SUB or PUB_SUB")
    expect_error(lambda: add(**dict(full, effect="PERMIT")), 400, "ParameterFieldCheckFailed", "ALLOW or DENY")
    expect_error(lambda: add(**full), 400, "ParameterFieldCheckFailed", "UpdateCustomAuthPermission")
    expect_error(lambda: v3().query_custom_auth_permission(models.QueryCustomAuthPermissionRequest(
        instance_id=INSTANCE, size=101)), 400, "ParameterFieldCheckFailed", "Size")
    expect_error(lambda: v3().delete_custom_auth_permission(models.DeleteCustomAuthPermissionRequest(
        instance_id=INSTANCE, identity_type="DEVICE", identity=identity, topic="devices/other/#")),
        400, "ParameterFieldCheckFailed", "AddCustomAuthPermission")
    assert listed(identity) == [("DEVICE", identity, TOPIC, "SUB", "DENY")], "a refused call changed something"


def after():
    identity = json.load(open(STATE))["identity"]
    assert listed(identity) == [("DEVICE", identity, TOPIC, "SUB", "DENY")], listed(identity)
    refused, stderr = subscribe_refused("devices/meter-1/cmd")
    assert refused, f"after the restart a SUBSCRIBE was not refused: {stderr}"
    log("after a restart: listed, and still enforced")

    v3().update_custom_auth_permission(models.UpdateCustomAuthPermissionRequest(
        **permission(identity, action="PUB", effect="DENY")))
    assert listed(identity) == [("DEVICE", identity, TOPIC, "PUB", "DENY")], listed(identity)
    refused, _ = subscribe_refused("devices/meter-1/cmd", wait=2)
    assert not refused, "UpdateCustomAuthPermission to PUB still refuses SUBSCRIBE"
    log("UpdateCustomAuthPermission: now PUB only")

    answer = v3().delete_custom_auth_permission(models.DeleteCustomAuthPermissionRequest(
        instance_id=INSTANCE, identity_type="DEVICE", identity=identity, topic=TOPIC)).body
    assert (answer.code, answer.success) == (200, True), answer
    assert listed(identity) == []
    assert receives("devices/meter-1/cmd"), "after the Delete the default does not apply"
    log("DeleteCustomAuthPermission: the default applies again")


if __name__ == "__main__":
    try:
        {"before": before, "after": after}[sys.argv[1]]()
        log(f"{sys.argv[1]}: passed")
    except AssertionError as e:
        print(f"[sdk-custom-auth] FAILED: {e}", flush=True)
        sys.exit(1)
