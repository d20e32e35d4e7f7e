#!/usr/bin/env bash
# Calls the certmq admin API with curl, signed with HMAC-SHA1 (signature V1),
# using only bash, openssl and curl.
#
#   ACCESS_KEY_ID=... ACCESS_KEY_SECRET=... ENDPOINT=http://127.0.0.1:8080 \
#     docs/examples/acs-curl.sh InactivateDeviceCertificate \
#       MqttInstanceId=mqtt-certmq-local CaSn=2B22... DeviceSn=5FC9...
#
# Over HTTPS (admin.tls_cert), set ENDPOINT=https://... and CA_FILE to the
# CA that issued the admin API's certificate (else curl trusts the system's
# CAs); with client certificates (admin.tls_client_ca), CLIENT_CERT and
# CLIENT_KEY too:
#
#   ENDPOINT=https://admin.example.com:8443 CA_FILE=admin-ca.pem \
#     CLIENT_CERT=operator.pem CLIENT_KEY=operator.key docs/examples/acs-curl.sh ...
#
# Prints the JSON answer; exits non-zero when the answer is an error.
set -euo pipefail

: "${ACCESS_KEY_ID:?set ACCESS_KEY_ID}" "${ACCESS_KEY_SECRET:?set ACCESS_KEY_SECRET}"
ENDPOINT="${ENDPOINT:-http://127.0.0.1:8080}"
tls=()
if [ -n "${CA_FILE:-}" ]; then tls+=(--cacert "$CA_FILE"); fi
if [ -n "${CLIENT_CERT:-}" ]; then
    tls+=(--cert "$CLIENT_CERT" --key "${CLIENT_KEY:?set CLIENT_KEY with CLIENT_CERT}")
fi
action="${1:?usage: acs-curl.sh Action [Name=value ...]}"
shift

# RFC 3986 percent-encoding: A-Z a-z 0-9 - _ . ~ stay, the rest is %XX.
pct() {
    local s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
            [A-Za-z0-9._~-]) out+="$c" ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

params=("Action=$action" "$@"
    "Format=JSON" "Version=2020-04-20" "AccessKeyId=$ACCESS_KEY_ID"
    "SignatureMethod=HMAC-SHA1" "SignatureVersion=1.0"
    "SignatureNonce=$(cat /proc/sys/kernel/random/uuid)"
    "Timestamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)")

# The canonical query: every k=v percent-encoded, sorted by name.
query=$(for p in "${params[@]}"; do
    printf '%s=%s\n' "$(pct "${p%%=*}")" "$(pct "${p#*=}")"
done | LC_ALL=C sort -t= -k1,1 | paste -sd '&' -)

# StringToSign = GET&%2F&pct(query); Signature = Base64(HMAC-SHA1(secret&)).
signature=$(printf 'GET&%%2F&%s' "$(pct "$query")" |
    openssl dgst -sha1 -hmac "${ACCESS_KEY_SECRET}&" -binary | base64)

answer=$(curl -sS ${tls[@]+"${tls[@]}"} -w '\n%{http_code}' "$ENDPOINT/?$query&Signature=$(pct "$signature")")
status="${answer##*$'\n'}"
printf '%s\n' "${answer%$'\n'*}"
[ "$status" -lt 400 ]
