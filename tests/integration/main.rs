//! certmq's integration tests: a real broker on loopback ports, real TLS
//! (rustls), real MQTT clients (rumqttc, and the mosquitto clients), real
//! HTTP admin calls. One test binary, so the suite links once.

mod support;

mod admin;
mod admin_api;
mod admin_tls;
mod authz;
mod cli;
mod cluster;
mod console;
mod crash;
mod crl;
mod crl_refresh;
mod curl;
mod custom_permissions;
mod durability;
mod events;
mod expiry;
mod fuzz_regressions;
mod hardening;
mod hostile;
mod inactivation;
mod mosquitto;
mod mqtt;
mod operations;
mod paho;
mod postgres;
mod proxy;
mod pubsub;
mod race;
mod resumption;
mod routing;
mod sdk;
mod signatures;
mod signed_action;
mod tls;
