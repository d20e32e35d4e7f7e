//! The configured policies and what they are attached to (`[authz]` in the
//! configuration), compiled once at start: [`PolicySet::grants`] gives a
//! connection its [`Grants`].
//!
//! An attachment names policies and selects certificates: by CA (`ca_sn`,
//! or `ca_file` whose serial is read at start), by one certificate
//! (`ca_sn` + `device_sn`), by subject CN (`common_name`, `*` matches any
//! run of characters), or several of these at once (all must match). A
//! certificate gets the policies of every attachment that selects it, or
//! else `authz.default_policies`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::custom::CustomPermissions;
use super::pattern::{Pattern, Principal, Var};
use super::policy::{Effect, Grants, Policy, Rule};
use crate::identity::DeviceIdentity;
use crate::serial::{CaSn, DeviceSn, Serial};

/// `[authz]`: policies, attachments, the default.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzSettings {
    pub default_policies: Vec<String>,
    /// What the development PKI's application certificate (CN `app`)
    /// gets, when the broker runs on the development PKI.
    #[serde(default)]
    pub dev_pki_app_policies: Vec<String>,
    pub policies: Vec<PolicySettings>,
    #[serde(default)]
    pub attach: Vec<AttachSettings>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub name: String,
    pub rules: Vec<RuleSettings>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// `allow` or `deny`.
    pub effect: String,
    /// `publish` and/or `subscribe`.
    pub actions: Vec<String>,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachSettings {
    pub policies: Vec<String>,
    #[serde(default)]
    pub ca_sn: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub device_sn: Option<String>,
    #[serde(default)]
    pub common_name: Option<String>,
}

/// Most policies, rules per policy, topics per rule and attachments: far
/// beyond a fleet's needs, and a bound on the work of every decision.
const MAX_POLICIES: usize = 1_000;
const MAX_RULES: usize = 100;
const MAX_TOPICS: usize = 100;
const MAX_ATTACHMENTS: usize = 10_000;

/// A problem in `[authz]`, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authz: {place}: {problem}")]
pub struct AuthzError {
    pub place: String,
    pub problem: String,
}

fn error(place: impl Into<String>, problem: impl Into<String>) -> AuthzError {
    AuthzError {
        place: place.into(),
        problem: problem.into(),
    }
}

/// Selects certificates.
#[derive(Debug, Clone)]
struct Attachment {
    policies: Vec<Arc<Policy>>,
    ca_sn: Option<CaSn>,
    device_sn: Option<DeviceSn>,
    common_name: Option<String>,
}

impl Attachment {
    fn selects(&self, identity: &DeviceIdentity, common_name: &str) -> bool {
        self.ca_sn.is_none_or(|sn| sn == identity.ca_sn)
            && self.device_sn.is_none_or(|sn| sn == identity.device_sn)
            && self
                .common_name
                .as_deref()
                .is_none_or(|glob| crate::glob::matches(glob, common_name))
    }
}

/// The policies in force: the compiled `[authz]` section, and the custom
/// permissions added through the API.
#[derive(Debug, Clone)]
pub struct PolicySet {
    by_name: HashMap<Arc<str>, Arc<Policy>>,
    defaults: Vec<Arc<Policy>>,
    attachments: Vec<Attachment>,
    uses_client_id: bool,
    custom: CustomPermissions,
    /// Counts the sets put in force (see `authz::live`): a session that
    /// judged under generation `g` knows whether it is up to date.
    generation: u64,
}

impl PolicySet {
    /// Compiles and checks `[authz]`; reads `ca_file`s.
    pub fn from_settings(settings: &AuthzSettings) -> Result<PolicySet, AuthzError> {
        if settings.policies.len() > MAX_POLICIES {
            return Err(error(
                "authz.policies",
                format!("at most {MAX_POLICIES} policies"),
            ));
        }
        let mut by_name: HashMap<&str, Arc<Policy>> = HashMap::new();
        let mut uses_client_id = false;
        for (i, p) in settings.policies.iter().enumerate() {
            let place = format!("policy `{}` (authz.policies[{i}])", p.name);
            if p.name.trim().is_empty() {
                return Err(error(
                    format!("authz.policies[{i}]"),
                    "a policy needs a name",
                ));
            }
            if by_name.contains_key(p.name.as_str()) {
                return Err(error(place, "the name is used twice"));
            }
            if p.rules.len() > MAX_RULES {
                return Err(error(place, format!("at most {MAX_RULES} rules")));
            }
            let mut rules = Vec::with_capacity(p.rules.len());
            for (r, rule) in p.rules.iter().enumerate() {
                let place = format!("{place} rule {}", r + 1);
                let compiled = compile_rule(rule).map_err(|problem| error(&place, problem))?;
                uses_client_id |= compiled.patterns.iter().any(|t| t.uses(Var::ClientId));
                rules.push(compiled);
            }
            by_name.insert(
                &p.name,
                Arc::new(Policy {
                    name: p.name.as_str().into(),
                    rules,
                }),
            );
        }
        if settings.attach.len() > MAX_ATTACHMENTS {
            return Err(error(
                "authz.attach",
                format!("at most {MAX_ATTACHMENTS} attachments"),
            ));
        }
        let by_name: HashMap<Arc<str>, Arc<Policy>> = by_name
            .into_iter()
            .map(|(name, policy)| (Arc::from(name), policy))
            .collect();
        let mut set = PolicySet {
            by_name,
            defaults: Vec::new(),
            attachments: Vec::with_capacity(settings.attach.len()),
            uses_client_id,
            custom: CustomPermissions::default(),
            generation: 0,
        };
        set.defaults = set.named("authz.default_policies", &settings.default_policies)?;
        for (i, a) in settings.attach.iter().enumerate() {
            set.attach(&format!("authz.attach[{i}]"), a)?;
        }
        Ok(set)
    }

    /// The policies of these names (`place` names the list in errors).
    fn named(&self, place: &str, names: &[String]) -> Result<Vec<Arc<Policy>>, AuthzError> {
        names
            .iter()
            .map(|n| {
                self.by_name.get(n.as_str()).cloned().ok_or_else(|| {
                    error(
                        place,
                        format!("no policy is named `{n}` (define it in [[authz.policies]])"),
                    )
                })
            })
            .collect()
    }

    /// Adds an attachment (`place` names it in errors).
    pub fn attach(&mut self, place: &str, a: &AttachSettings) -> Result<(), AuthzError> {
        let policies = self.named(place, &a.policies)?;
        let ca_sn = match (&a.ca_sn, &a.ca_file) {
            (Some(_), Some(_)) => return Err(error(place, "give ca_sn or ca_file, not both")),
            (Some(sn), None) => {
                Some(CaSn::parse(sn).map_err(|e| error(place, format!("ca_sn: {e}")))?)
            }
            (None, Some(path)) => Some(ca_file_sn(path).map_err(|e| error(place, e))?),
            (None, None) => None,
        };
        let device_sn = match &a.device_sn {
            Some(_) if ca_sn.is_none() => {
                return Err(error(
                    place,
                    "device_sn needs ca_sn or ca_file (a serial is unique only under its CA)",
                ));
            }
            Some(sn) => {
                Some(DeviceSn::parse(sn).map_err(|e| error(place, format!("device_sn: {e}")))?)
            }
            None => None,
        };
        if ca_sn.is_none() && a.common_name.is_none() {
            return Err(error(
                place,
                "select certificates with ca_sn, ca_file, device_sn and/or common_name (to give every certificate a policy, use authz.default_policies)",
            ));
        }
        self.attachments.push(Attachment {
            policies,
            ca_sn,
            device_sn,
            common_name: a.common_name.clone(),
        });
        Ok(())
    }

    /// Gives the development PKI's application certificate (CN `app`,
    /// issued by the CA in `ca_file`) `authz.dev_pki_app_policies`.
    pub fn attach_dev_pki_app(
        &mut self,
        settings: &AuthzSettings,
        ca_file: &std::path::Path,
        common_name: &str,
    ) -> Result<(), AuthzError> {
        if settings.dev_pki_app_policies.is_empty() {
            return Ok(());
        }
        self.attach(
            "authz.dev_pki_app_policies",
            &AttachSettings {
                policies: settings.dev_pki_app_policies.clone(),
                ca_file: Some(ca_file.to_path_buf()),
                common_name: Some(common_name.to_owned()),
                ..Default::default()
            },
        )
    }
}

impl PolicySet {
    /// Whether some rule uses `${ClientId}` (chosen by the client: with
    /// `mqtt.client_id_policy = "any"` that lets a device pick its grants).
    pub fn uses_client_id(&self) -> bool {
        self.uses_client_id
    }

    /// The policies that apply to a certificate.
    pub fn policies_for(&self, identity: &DeviceIdentity, common_name: &str) -> Vec<&Policy> {
        let mut selected: Vec<&Policy> = self
            .attachments
            .iter()
            .filter(|a| a.selects(identity, common_name))
            .flat_map(|a| a.policies.iter().map(|p| p.as_ref()))
            .collect();
        if selected.is_empty() {
            selected = self.defaults.iter().map(|p| p.as_ref()).collect();
        }
        selected
    }

    /// A connection's grants: its configured policies and its custom
    /// permissions.
    pub fn grants(&self, identity: &DeviceIdentity, who: &Principal) -> Grants {
        let mut policies = self.policies_for(identity, &who.common_name);
        policies.extend(self.custom.policies_for(identity, &who.client_id));
        Grants::new(policies, who)
    }

    pub fn custom(&self) -> &CustomPermissions {
        &self.custom
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// This set with `custom` as its custom permissions (as the broker puts
    /// the stored ones in force at start, and `certmq authz explain` reads
    /// them).
    pub fn with_custom(&self, custom: CustomPermissions) -> PolicySet {
        PolicySet {
            custom,
            ..self.clone()
        }
    }

    pub(super) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }
}

fn compile_rule(rule: &RuleSettings) -> Result<Rule, String> {
    let effect = match rule.effect.as_str() {
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        other => return Err(format!("effect `{other}`: it is `allow` or `deny`")),
    };
    let (mut publish, mut subscribe) = (false, false);
    for action in &rule.actions {
        match action.as_str() {
            "publish" => publish = true,
            "subscribe" => subscribe = true,
            other => {
                return Err(format!(
                    "action `{other}`: the actions are `publish` and `subscribe`"
                ));
            }
        }
    }
    if !publish && !subscribe {
        return Err("no actions: give `publish`, `subscribe` or both".into());
    }
    if rule.topics.is_empty() || rule.topics.len() > MAX_TOPICS {
        return Err(format!("give 1 to {MAX_TOPICS} topics"));
    }
    let patterns = rule
        .topics
        .iter()
        .map(|t| {
            Pattern::parse(t)
                .map_err(|e| format!("topic `{}`: {e}", t.chars().take(128).collect::<String>()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Rule {
        effect,
        publish,
        subscribe,
        patterns,
    })
}

/// The serial of the (first) certificate in a PEM file.
fn ca_file_sn(path: &std::path::Path) -> Result<CaSn, String> {
    let certs = crate::pki::pem_certificates(path)
        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    let der = &certs[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    Serial::from_der_content(cert.raw_serial())
        .map(CaSn)
        .map_err(|e| format!("ca_file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> AuthzSettings {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            authz: AuthzSettings,
        }
        let w: Wrapper = ::config::Config::builder()
            .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        w.authz
    }

    const BASE: &str = r##"
[authz]
default_policies = ["own"]
[[authz.policies]]
name = "own"
rules = [{ effect = "allow", actions = ["publish", "subscribe"], topics = ["devices/${CommonName}/#"] }]
[[authz.policies]]
name = "app"
rules = [
  { effect = "allow", actions = ["publish", "subscribe"], topics = ["devices/#"] },
  { effect = "deny", actions = ["subscribe"], topics = ["devices/+/secrets"] },
]
[[authz.policies]]
name = "quiet"
rules = [{ effect = "deny", actions = ["publish"], topics = ["#"] }]
"##;

    fn identity(ca: u8, dev: u8) -> DeviceIdentity {
        DeviceIdentity {
            ca_sn: CaSn(Serial::from_der_content(&[ca]).unwrap()),
            device_sn: DeviceSn(Serial::from_der_content(&[dev]).unwrap()),
        }
    }

    fn who(cn: &str) -> Principal {
        Principal {
            common_name: cn.into(),
            ..Default::default()
        }
    }

    #[test]
    fn attachments_select_and_combine_and_deny_wins() {
        let toml = format!(
            "{BASE}\n[[authz.attach]]\npolicies = [\"app\"]\ncommon_name = \"app-*\"\n\
             [[authz.attach]]\npolicies = [\"quiet\"]\nca_sn = \"{}\"\ndevice_sn = \"{}\"\n",
            identity(1, 9).ca_sn,
            identity(1, 9).device_sn
        );
        let set = PolicySet::from_settings(&settings(&toml)).unwrap();
        let filter = |s: &str| super::super::Filter::parse(s).unwrap();
        // No attachment: the default.
        let plain = set.grants(&identity(1, 2), &who("device-2"));
        assert!(plain.publish("devices/device-2/t").is_allowed());
        assert!(!plain.subscribe(&filter("devices/+/t")).is_allowed());
        // By subject CN.
        let app = set.grants(&identity(1, 3), &who("app-main"));
        assert!(app.subscribe(&filter("devices/+/telemetry")).is_allowed());
        assert!(
            !app.subscribe(&filter("devices/#")).is_allowed(),
            "deny wins"
        );
        // One certificate, and its CN selects the app policy too: deny wins.
        let muted = set.grants(&identity(1, 9), &who("app-2"));
        assert!(!muted.publish("devices/x/cmd").is_allowed());
        assert!(muted.subscribe(&filter("devices/+/telemetry")).is_allowed());
        // The same serial under another CA is another certificate.
        let other = set.grants(&identity(2, 9), &who("app-2"));
        assert!(other.publish("devices/x/cmd").is_allowed());
        assert!(!set.uses_client_id());
    }

    #[test]
    fn problems_name_the_policy_and_the_rule() {
        for (extra, needle) in [
            (
                "[[authz.policies]]\nname = \"bad\"\nrules = [{ effect = \"allow\", actions = [\"publish\"], topics = [\"a/${Nope}\"] }]\n",
                "policy `bad` (authz.policies[3]) rule 1",
            ),
            (
                "[[authz.policies]]\nname = \"bad\"\nrules = [{ effect = \"maybe\", actions = [\"publish\"], topics = [\"a\"] }]\n",
                "effect `maybe`",
            ),
            (
                "[[authz.policies]]\nname = \"bad\"\nrules = [{ effect = \"allow\", actions = [\"read\"], topics = [\"a\"] }]\n",
                "action `read`",
            ),
            (
                "[[authz.policies]]\nname = \"bad\"\nrules = [{ effect = \"allow\", actions = [\"publish\"], topics = [\"a/#/b\"] }]\n",
                "`#` must be",
            ),
            (
                "[[authz.policies]]\nname = \"own\"\nrules = []\n",
                "used twice",
            ),
            (
                "[[authz.attach]]\npolicies = [\"missing\"]\ncommon_name = \"x\"\n",
                "no policy is named `missing`",
            ),
            (
                "[[authz.attach]]\npolicies = [\"own\"]\n",
                "select certificates",
            ),
            (
                "[[authz.attach]]\npolicies = [\"own\"]\ndevice_sn = \"01\"\n",
                "device_sn needs ca_sn",
            ),
            (
                "[[authz.attach]]\npolicies = [\"own\"]\nca_sn = \"not hex\"\n",
                "authz.attach[0]: ca_sn",
            ),
            (
                "[[authz.attach]]\npolicies = [\"own\"]\nca_file = \"/nonexistent/ca.pem\"\n",
                "/nonexistent/ca.pem",
            ),
        ] {
            let err = PolicySet::from_settings(&settings(&format!("{BASE}{extra}"))).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let uses = format!(
            "{BASE}[[authz.policies]]\nname = \"by-id\"\nrules = [{{ effect = \"allow\", actions = [\"publish\"], topics = [\"c/${{ClientId}}\"] }}]\n"
        );
        assert!(
            PolicySet::from_settings(&settings(&uses))
                .unwrap()
                .uses_client_id()
        );
    }
}
