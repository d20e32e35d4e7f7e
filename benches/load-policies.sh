#!/usr/bin/env bash
# The [authz] section the benchmarks' loads need, on stdout (a certmq.toml):
# each device keeps its own namespace (the default), the publish
# subscriber and the fan-out publisher (CN load-000000) get the fleet
# application's reach plus fleet/#, and every device may subscribe to the
# fan-out topic fleet/broadcast.
cat <<'TOML'
[authz]
default_policies = ["own-namespace", "broadcast-listener"]

[[authz.policies]]
name = "own-namespace"
rules = [
  { effect = "allow", actions = ["publish", "subscribe"], topics = ["devices/${CommonName}/#"] },
]

[[authz.policies]]
name = "fleet-application"
rules = [
  { effect = "allow", actions = ["publish", "subscribe"], topics = ["devices/#", "fleet/#"] },
]

[[authz.policies]]
name = "broadcast-listener"
rules = [
  { effect = "allow", actions = ["subscribe"], topics = ["fleet/broadcast"] },
]

[[authz.attach]]
policies = ["fleet-application"]
common_name = "load-000000"
TOML
