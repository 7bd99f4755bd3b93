//! Which versions of a model serve, which one answers a request that names
//! none, and how a canary shares that traffic.
//!
//! A policy comes from `models/<name>/policy.toml` or from the `config` of a
//! repository load call. Its `version_policy` has the shape of Triton's model
//! configuration (`{"latest": {"num_versions": 2}}`, `{"all": {}}`,
//! `{"specific": {"versions": [1, 3]}}`), so a Triton client's load call with a
//! config override means here what it means there; `default_version` and
//! `canary` are inferd's own.
//!
//! The canary split is a pure function of the model name and the request id:
//! a client that retries with the same `x-request-id` lands on the same
//! version, and every worker behind a load balancer agrees.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Which versions on disk are served.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The highest `num_versions` versions.
    Latest {
        #[serde(alias = "numVersions")]
        /// How many.
        num_versions: u32,
    },
    /// Every version.
    All {},
    /// Exactly these versions (those present on disk).
    Specific {
        /// The version numbers.
        versions: Vec<u64>,
    },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::All {}
    }
}

/// A share of the requests that name no version goes to another version.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The canary version.
    pub version: u64,
    /// The share of traffic, 0 to 1.
    pub weight: f64,
}

/// A share of the requests the default version answers is also run on
/// another version, off the request path, to compare the two on live traffic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// The shadow version.
    pub version: u64,
    /// The share of the default version's requests copied to it, 0 to 1.
    pub fraction: f64,
}

/// `policy.toml`, or a load call's `config`: which versions serve and how
/// requests that name none are routed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, alias = "versionPolicy")]
    /// Which versions on disk serve.
    pub version_policy: VersionPolicy,
    /// The version that answers when a request names none; the highest
    /// served version when unset.
    #[serde(default, alias = "defaultVersion")]
    pub default_version: Option<u64>,
    #[serde(default)]
    /// A share of unversioned requests sent to another version.
    pub canary: Option<Canary>,
    #[serde(default)]
    /// A share of the default version's requests also run on another.
    pub shadow: Option<Shadow>,
}

/// Where requests that name no version go, once the served set is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// The version answering requests that name none.
    pub default: u64,
    /// The canary's version and share of those requests.
    pub canary: Option<(u64, f64)>,
    /// The shadow's version and share of the default version's requests.
    pub shadow: Option<(u64, f64)>,
}

impl Policy {
    /// Checks what can be checked without the directory.
    pub fn validate(&self) -> Result<(), String> {
        match &self.version_policy {
            VersionPolicy::Latest { num_versions: 0 } => {
                return Err("version_policy.latest.num_versions must be at least 1".into())
            }
            VersionPolicy::Specific { versions } if versions.is_empty() => {
                return Err("version_policy.specific.versions must name a version".into())
            }
            _ => {}
        }
        if let Some(c) = &self.canary {
            if !(0.0..=1.0).contains(&c.weight) {
                return Err(format!(
                    "canary.weight must be within 0..1, got {}",
                    c.weight
                ));
            }
        }
        if let Some(s) = &self.shadow {
            if !(0.0..=1.0).contains(&s.fraction) {
                return Err(format!(
                    "shadow.fraction must be within 0..1, got {}",
                    s.fraction
                ));
            }
        }
        Ok(())
    }

    /// The versions to serve, of those `on_disk`.
    pub fn select(&self, on_disk: &BTreeSet<u64>) -> BTreeSet<u64> {
        match &self.version_policy {
            VersionPolicy::All {} => on_disk.clone(),
            VersionPolicy::Latest { num_versions } => on_disk
                .iter()
                .rev()
                .take(*num_versions as usize)
                .copied()
                .collect(),
            VersionPolicy::Specific { versions } => versions
                .iter()
                .filter(|v| on_disk.contains(v))
                .copied()
                .collect(),
        }
    }

    /// The routing over the versions actually serving, or why the policy
    /// cannot route over them.
    pub fn routing(&self, serving: &BTreeSet<u64>) -> Result<Routing, String> {
        let highest = *serving.iter().next_back().ok_or("no version serves")?;
        let default = match self.default_version {
            None => highest,
            Some(v) if serving.contains(&v) => v,
            Some(v) => {
                return Err(format!(
                    "default_version {v} is not among the serving versions {serving:?}"
                ))
            }
        };
        let canary = match &self.canary {
            None => None,
            Some(c) if c.version == default || c.weight == 0.0 => None,
            Some(c) if serving.contains(&c.version) => Some((c.version, c.weight)),
            Some(c) => {
                return Err(format!(
                    "canary version {} is not among the serving versions {serving:?}",
                    c.version
                ))
            }
        };
        let shadow = match &self.shadow {
            None => None,
            Some(s) if s.version == default => {
                return Err(format!(
                    "shadow version {} is the default version",
                    s.version
                ))
            }
            Some(s) if s.fraction == 0.0 => None,
            Some(s) if serving.contains(&s.version) => Some((s.version, s.fraction)),
            Some(s) => {
                return Err(format!(
                    "shadow version {} is not among the serving versions {serving:?}",
                    s.version
                ))
            }
        };
        Ok(Routing {
            default,
            canary,
            shadow,
        })
    }

    /// A policy from its JSON (a load call's `config`) or TOML (`policy.toml`).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let p: Policy = serde_json::from_str(text).map_err(|e| format!("config: {e}"))?;
        p.validate().map(|_| p)
    }

    /// Parses `policy.toml`.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let p: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        p.validate().map(|_| p)
    }
}

impl Routing {
    /// The version for a request that named none.
    pub fn pick(&self, model: &str, request_id: Option<&str>) -> u64 {
        match (self.canary, request_id) {
            (Some((canary, weight)), Some(id)) if bucket(model, id) < weight => canary,
            _ => self.default,
        }
    }

    /// Whether `version`, answering a request with this id, is the canary's
    /// share (else the request named it, or it is the default).
    pub fn is_canary(&self, model: &str, version: u64, request_id: &str) -> bool {
        matches!(self.canary, Some((c, w)) if c == version && bucket(model, request_id) < w)
    }

    /// The shadow version to copy this request to, if any: only requests the
    /// default version answers, and a share of them drawn independently of
    /// the canary's (the salt), stable per request id like the canary's.
    pub fn shadow_of(&self, model: &str, version: u64, request_id: &str) -> Option<u64> {
        let (s, fraction) = self.shadow?;
        if version != self.default || request_id.is_empty() {
            return None;
        }
        (fraction >= 1.0 || salted_bucket(model, request_id, SHADOW_SALT) < fraction).then_some(s)
    }
}

const SHADOW_SALT: u64 = 0x5348_4144_4f57;

/// A request id's place in [0, 1), from FNV-1a over the model name and the id:
/// stable across processes, builds and machines (std's hasher promises none
/// of that), and the model name keeps one request id from being the canary of
/// every model at once.
pub fn bucket(model: &str, request_id: &str) -> f64 {
    salted_bucket(model, request_id, 0)
}

fn salted_bucket(model: &str, request_id: &str, salt: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for b in model
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(request_id.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys: finish with a multiply-xorshift
    // (splitmix64's) before taking the top 53 bits as the fraction.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn triton_shaped_policies_parse_and_select() {
        let p =
            Policy::from_json(r#"{"version_policy": {"latest": {"num_versions": 2}}}"#).unwrap();
        assert_eq!(p.select(&set(&[1, 2, 3])), set(&[2, 3]));
        let p =
            Policy::from_json(r#"{"versionPolicy": {"specific": {"versions": [1, 9]}}}"#).unwrap();
        assert_eq!(p.select(&set(&[1, 2])), set(&[1]));
        let p = Policy::from_json(r#"{"version_policy": {"all": {}}}"#).unwrap();
        assert_eq!(p.select(&set(&[1, 2])), set(&[1, 2]));
        assert_eq!(Policy::default().select(&set(&[4, 7])), set(&[4, 7]));
        let p = Policy::from_toml("default_version = 1\n[canary]\nversion = 2\nweight = 0.25\n")
            .unwrap();
        assert_eq!(p.canary.as_ref().map(|c| c.version), Some(2));
        // The README's policy.toml.
        let p = Policy::from_toml(
            "version_policy = { specific = { versions = [1, 2] } }\ndefault_version = 1\n\
             canary = { version = 2, weight = 0.1 }\n",
        )
        .unwrap();
        assert_eq!(p.select(&set(&[1, 2, 3])), set(&[1, 2]));
        let p = Policy::from_toml("version_policy = { all = {} }\n").unwrap();
        assert_eq!(p.version_policy, VersionPolicy::All {});
        let p = Policy::from_toml("[version_policy.latest]\nnum_versions = 1\n").unwrap();
        assert_eq!(p.select(&set(&[1, 2])), set(&[2]));
        for bad in [
            r#"{"version_policy": {"latest": {"num_versions": 0}}}"#,
            r#"{"version_policy": {"specific": {"versions": []}}}"#,
            r#"{"canary": {"version": 2, "weight": 1.5}}"#,
            r#"{"version_polcy": {"all": {}}}"#,
        ] {
            assert!(Policy::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routing_needs_its_versions_to_serve() {
        let p = Policy {
            default_version: Some(1),
            canary: Some(Canary {
                version: 2,
                weight: 0.1,
            }),
            ..Policy::default()
        };
        assert_eq!(
            p.routing(&set(&[1, 2])),
            Ok(Routing {
                shadow: None,
                default: 1,
                canary: Some((2, 0.1))
            })
        );
        assert!(p.routing(&set(&[1])).unwrap_err().contains("canary"));
        assert!(p
            .routing(&set(&[2]))
            .unwrap_err()
            .contains("default_version"));
        assert_eq!(Policy::default().routing(&set(&[1, 3])).unwrap().default, 3);
        assert!(Policy::default().routing(&set(&[])).is_err());
    }

    #[test]
    fn a_shadow_copies_a_share_of_the_default_versions_requests_only() {
        let p = Policy::from_toml(
            "default_version = 3\n[shadow]\nversion = 2\nfraction = 0.5\n[canary]\nversion = 1\nweight = 0.2\n",
        )
        .unwrap();
        let r = p.routing(&set(&[1, 2, 3])).unwrap();
        assert_eq!(r.shadow, Some((2, 0.5)));
        let ids: Vec<String> = (0..4000).map(|i| format!("req-{i}")).collect();
        let copied = ids
            .iter()
            .filter(|id| r.shadow_of("m", 3, id).is_some())
            .count();
        assert!((1800..=2200).contains(&copied), "{copied}");
        // Not for the canary's requests, nor for requests naming another version.
        assert!(ids.iter().all(|id| r.shadow_of("m", 1, id).is_none()));
        // Independent of the canary's draw: about half of the canary's share
        // would have been shadowed had the default answered it.
        let both = ids
            .iter()
            .filter(|id| r.is_canary("m", 1, id) && r.shadow_of("m", 3, id).is_some())
            .count();
        assert!((300..=500).contains(&both), "{both}");
        let bad = |t: &str| Policy::from_toml(t).and_then(|p| p.routing(&set(&[1, 2])));
        assert!(bad("[shadow]\nversion = 2\nfraction = 1\n")
            .unwrap_err()
            .contains("default"));
        assert!(bad("[shadow]\nversion = 5\nfraction = 1\n")
            .unwrap_err()
            .contains("not among"));
        assert!(bad("[shadow]\nversion = 1\nfraction = 2\n")
            .unwrap_err()
            .contains("within"));
    }

    #[test]
    fn the_canary_share_holds_and_a_request_id_always_lands_in_one_place() {
        let r = Routing {
            shadow: None,
            default: 1,
            canary: Some((2, 0.1)),
        };
        let n = 10_000;
        let ids: Vec<String> = (0..n).map(|i| format!("req-{i:08}")).collect();
        let canary = ids.iter().filter(|id| r.pick("m", Some(id)) == 2).count();
        let share = canary as f64 / n as f64;
        assert!((0.085..=0.115).contains(&share), "canary share {share}");
        for id in &ids[..100] {
            assert_eq!(r.pick("m", Some(id)), r.pick("m", Some(id)));
        }
        assert_eq!(r.pick("m", None), 1, "no request id: the default");
    }
}
