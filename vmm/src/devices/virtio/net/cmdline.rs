//! `vmm --net tap=NAME[,mac=..][,vhost=on|off]`: the spec, its parsing and
//! printing, and building the device it asks for.

use super::device::NetDevice;
use super::spec::DEFAULT_MAC;
use super::tap::{Tap, TapError};

/// What `vmm --net` asks for: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,vhost=on|off]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Tap interface name.
    pub tap: String,
    /// Guest MAC ([`DEFAULT_MAC`] unless given).
    pub mac: [u8; 6],
    /// Hand the rings to the host's vhost-net (`vhost=on`) instead of moving
    /// frames in the VMM (`off`, the default).
    pub vhost: bool,
}

const NET_SPEC_FORM: &str = "tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,vhost=on|off]";

/// Why a `--net` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetSpecError {
    /// No `tap=NAME`.
    #[error("expected {NET_SPEC_FORM}")]
    NoTap,
    /// A key other than `tap`, `mac` or `vhost`, a key given twice, or a
    /// `vhost` value other than on/off.
    #[error("unknown or repeated option {0:?} (expected {NET_SPEC_FORM})")]
    Option(String),
    /// A MAC that is not six hex pairs, or a multicast one.
    #[error("bad MAC {0:?} (expected six hex pairs, unicast, e.g. 52:54:00:12:34:56)")]
    Mac(String),
}

impl std::str::FromStr for NetSpec {
    type Err = NetSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut mac, mut vhost) = (None, None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) if tap.is_none() => tap = Some(v.to_owned()),
                Some(("mac", v)) if mac.is_none() => {
                    let m = parse_mac(v)
                        .filter(|m| m[0] & 1 == 0)
                        .ok_or_else(|| NetSpecError::Mac(v.to_owned()))?;
                    mac = Some(m);
                }
                Some(("vhost", "on")) if vhost.is_none() => vhost = Some(true),
                Some(("vhost", "off")) if vhost.is_none() => vhost = Some(false),
                _ => return Err(NetSpecError::Option(part.to_owned())),
            }
        }
        Ok(NetSpec {
            tap: tap.ok_or(NetSpecError::NoTap)?,
            mac: mac.unwrap_or(DEFAULT_MAC),
            vhost: vhost.unwrap_or(false),
        })
    }
}

/// The `--net` form again (`tap=NAME,mac=..,vhost=on|off`), every key given: it parses back
/// to the same spec (the nested runner hands it to the vmm inside L1).
impl std::fmt::Display for NetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.mac;
        write!(
            f,
            "tap={},mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x},vhost={}",
            self.tap,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            if self.vhost { "on" } else { "off" }
        )
    }
}

/// A device built from a [`NetSpec`] by [`NetSpec::build`].
pub struct BuiltNet {
    /// The device.
    pub device: NetDevice,
    /// Host coverage under way (vhost backend with host kcov).
    pub host_kcov: Option<crate::host_kcov::HostKcov>,
    /// What the host could not give and what the device does instead, one line each
    /// (for the user: the run goes on).
    pub notes: Vec<String>,
}

impl NetSpec {
    /// Opens the tap and builds the device: the host's vhost-net when `vhost=on` or
    /// `host_kcov` asks for it and the host has `/dev/vhost-net` (else the userspace tap
    /// backend, with a note); host kcov when asked for and the host has it (else a note).
    /// Fails only when the tap cannot be opened.
    pub fn build(&self, host_kcov: bool) -> Result<BuiltNet, TapError> {
        let tap = Tap::open(&self.tap)?;
        let mut notes = Vec::new();
        let mut vhost = self.vhost || host_kcov;
        if vhost {
            if let Err(e) = frontends::vhost_net::probe() {
                notes.push(format!(
                    "vhost=on: {e}; using the userspace tap backend{}",
                    if host_kcov {
                        ", without host coverage"
                    } else {
                        ""
                    }
                ));
                vhost = false;
            }
        }
        let mut kcov = None;
        if vhost && host_kcov {
            match crate::host_kcov::HostKcov::start() {
                Ok(h) => kcov = Some(h),
                Err(e) => notes.push(format!("{e}; going on without host coverage")),
            }
        }
        let device = if vhost {
            NetDevice::vhost(tap, self.mac, kcov.as_ref().map(|h| h.owner()))
        } else {
            NetDevice::new(Box::new(tap), self.mac)
        };
        Ok(BuiltNet {
            device,
            host_kcov: kcov,
            notes,
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(DEFAULT_MAC));
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn net_spec_displays_in_its_own_form() {
        for text in ["tap=tap0", "tap=t1,mac=02:00:00:aa:bb:cc,vhost=on"] {
            let spec: NetSpec = text.parse().unwrap();
            let shown = spec.to_string();
            assert_eq!(shown.parse::<NetSpec>().unwrap(), spec, "{shown}");
        }
        let spec: NetSpec = "tap=tap0".parse().unwrap();
        assert_eq!(spec.to_string(), "tap=tap0,mac=52:54:00:12:34:56,vhost=off");
    }

    #[test]
    fn net_spec_parsing() {
        assert_eq!(
            "tap=tap0".parse::<NetSpec>(),
            Ok(NetSpec {
                tap: "tap0".into(),
                mac: DEFAULT_MAC,
                vhost: false,
            })
        );
        assert!("tap=t,vhost=on".parse::<NetSpec>().unwrap().vhost);
        assert!(!"tap=t,vhost=off".parse::<NetSpec>().unwrap().vhost);
        for bad in ["tap=t,vhost=yes", "tap=t,vhost=on,vhost=off", "tap=t,vhost"] {
            assert!(
                matches!(bad.parse::<NetSpec>(), Err(NetSpecError::Option(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "tap=t1,mac=02:00:00:00:00:01"
                .parse::<NetSpec>()
                .unwrap()
                .mac,
            [2, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            "mac=02:00:00:00:00:01".parse::<NetSpec>(),
            Err(NetSpecError::NoTap)
        );
        assert!(matches!(
            "tap=a,tap=b".parse::<NetSpec>(),
            Err(NetSpecError::Option(_))
        ));
        assert_eq!("vhost=on".parse::<NetSpec>(), Err(NetSpecError::NoTap));
        assert!(matches!(
            "tap=a,mac=01:00:00:00:00:01".parse::<NetSpec>(),
            Err(NetSpecError::Mac(_))
        ));
    }
}
