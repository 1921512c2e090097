//! The identity store and the selection rules of the token endpoint.
//!
//! Selectors (`client_id`, `object_id` alias `principal_id`, `msi_res_id` alias `mi_res_id`)
//! are mutually exclusive. Without one: the system-assigned identity; without that, the only
//! user-assigned one; with several user-assigned ones, an error. GUIDs compare
//! case-insensitively, and so do ARM resource ids (as ARM does).

use crate::config::{IdentityConfig, IdentityKind};
use crate::limits::MAX_IDENTITIES;
use crate::query::Params;

/// How a request picked its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// No selector: the system-assigned identity, or the only user-assigned one.
    Default,
    /// `client_id`.
    ClientId(&'a str),
    /// `object_id` / `principal_id`.
    ObjectId(&'a str),
    /// `msi_res_id` / `mi_res_id`.
    ResourceId(&'a str),
}

impl<'a> Selector<'a> {
    /// Read the selector from request parameters.
    pub fn from_params(p: &Params<'a>) -> Result<Selector<'a>, SelectError> {
        let mut found: Option<Selector<'a>> = None;
        let candidates = [
            ("client_id", p.get("client_id").map(Selector::ClientId)),
            ("object_id", p.get("object_id").map(Selector::ObjectId)),
            (
                "principal_id",
                p.get("principal_id").map(Selector::ObjectId),
            ),
            ("msi_res_id", p.get("msi_res_id").map(Selector::ResourceId)),
            ("mi_res_id", p.get("mi_res_id").map(Selector::ResourceId)),
        ];
        for (_, sel) in candidates {
            if let Some(sel) = sel {
                if found.is_some() {
                    return Err(SelectError::MultipleSelectors);
                }
                found = Some(sel);
            }
        }
        Ok(found.unwrap_or(Selector::Default))
    }
}

/// Why no identity was selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// More than one of client_id / object_id / msi_res_id (or their aliases).
    MultipleSelectors,
    /// No selector, no system-assigned identity and several user-assigned ones.
    MultipleUserAssigned,
    /// The selector matches no identity (or the VM has no identity at all).
    NotFound,
}

impl SelectError {
    /// The `error_description` IMDS sends.
    pub fn description(&self) -> &'static str {
        match self {
            SelectError::MultipleSelectors => {
                "Only one of client_id, object_id or msi_res_id may be specified"
            }
            SelectError::MultipleUserAssigned => {
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
            }
            SelectError::NotFound => "Identity not found",
        }
    }
}

impl core::fmt::Display for SelectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.description())
    }
}

impl core::error::Error for SelectError {}

/// The VM's identities, in config order.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    list: heapless::Vec<IdentityConfig, MAX_IDENTITIES>,
}

impl IdentityStore {
    /// The identities of a validated configuration.
    pub fn new(list: heapless::Vec<IdentityConfig, MAX_IDENTITIES>) -> Self {
        IdentityStore { list }
    }

    /// The identity at `index`.
    pub fn get(&self, index: u8) -> Option<&IdentityConfig> {
        self.list.get(index as usize)
    }

    /// How many identities there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every identity, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &IdentityConfig> {
        self.list.iter()
    }

    /// The index of the identity the selector picks.
    pub fn select(&self, sel: Selector<'_>) -> Result<u8, SelectError> {
        let pos = |f: &dyn Fn(&IdentityConfig) -> bool| {
            self.list
                .iter()
                .position(f)
                .map(|i| i as u8)
                .ok_or(SelectError::NotFound)
        };
        match sel {
            Selector::ClientId(id) => pos(&|i| i.client_id.eq_ignore_ascii_case(id)),
            Selector::ObjectId(id) => pos(&|i| i.object_id.eq_ignore_ascii_case(id)),
            Selector::ResourceId(id) => pos(&|i| i.resource_id.eq_ignore_ascii_case(id)),
            Selector::Default => {
                if let Ok(i) = pos(&|i| i.kind == IdentityKind::System) {
                    return Ok(i);
                }
                let mut users = self
                    .list
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.kind == IdentityKind::User);
                match (users.next(), users.next()) {
                    (Some((i, _)), None) => Ok(i as u8),
                    (Some(_), Some(_)) => Err(SelectError::MultipleUserAssigned),
                    (None, _) => Err(SelectError::NotFound),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query;

    fn ident(kind: IdentityKind, n: u8) -> IdentityConfig {
        let g = |p: char| {
            let mut s = heapless::String::<36>::new();
            for (i, c) in "00000000-0000-0000-0000-00000000000".chars().enumerate() {
                let _ = s.push(if i == 0 { p } else { c });
            }
            let _ = s.push((b'0' + n) as char);
            s
        };
        let mut rid = heapless::String::new();
        let _ = core::fmt::write(
            &mut rid,
            format_args!("/subscriptions/s/resourceGroups/RG/providers/x/id{n}"),
        );
        IdentityConfig {
            kind,
            client_id: g('a'),
            object_id: g('b'),
            resource_id: rid,
            #[cfg(feature = "broker")]
            credential: None,
        }
    }

    fn store(ids: &[IdentityConfig]) -> IdentityStore {
        IdentityStore::new(heapless::Vec::from_slice(ids).unwrap())
    }

    fn sel<'b>(q: &[u8], buf: &'b mut [u8]) -> Result<Selector<'b>, SelectError> {
        let p = query::decode(q, buf).unwrap();
        Selector::from_params(&p)
    }

    #[test]
    fn default_rules() {
        let sys = ident(IdentityKind::System, 0);
        let u1 = ident(IdentityKind::User, 1);
        let u2 = ident(IdentityKind::User, 2);
        assert_eq!(
            store(&[u1.clone(), sys.clone(), u2.clone()]).select(Selector::Default),
            Ok(1)
        );
        assert_eq!(
            store(core::slice::from_ref(&u1)).select(Selector::Default),
            Ok(0)
        );
        assert_eq!(
            store(&[u1.clone(), u2.clone()]).select(Selector::Default),
            Err(SelectError::MultipleUserAssigned)
        );
        assert_eq!(
            store(&[]).select(Selector::Default),
            Err(SelectError::NotFound)
        );
    }

    #[test]
    fn selectors_and_aliases() {
        let s = store(&[
            ident(IdentityKind::System, 0),
            ident(IdentityKind::User, 1),
            ident(IdentityKind::User, 2),
        ]);
        let mut b = [0u8; 512];
        let c = sel(b"client_id=A0000000-0000-0000-0000-000000000002", &mut b).unwrap();
        assert_eq!(s.select(c), Ok(2), "GUIDs compare case-insensitively");
        let mut b = [0u8; 512];
        assert_eq!(
            s.select(sel(b"object_id=b0000000-0000-0000-0000-000000000001", &mut b).unwrap()),
            Ok(1)
        );
        let mut b = [0u8; 512];
        assert_eq!(
            s.select(sel(b"principal_id=b0000000-0000-0000-0000-000000000001", &mut b).unwrap()),
            Ok(1)
        );
        let mut b = [0u8; 512];
        let r = sel(
            b"msi_res_id=%2Fsubscriptions%2Fs%2FresourceGroups%2Frg%2Fproviders%2Fx%2Fid2",
            &mut b,
        )
        .unwrap();
        assert_eq!(
            s.select(r),
            Ok(2),
            "resource ids compare case-insensitively"
        );
        let mut b = [0u8; 512];
        assert_eq!(
            s.select(
                sel(
                    b"mi_res_id=/subscriptions/s/resourceGroups/rg/providers/x/id0",
                    &mut b
                )
                .unwrap()
            ),
            Ok(0)
        );
        let mut b = [0u8; 512];
        assert_eq!(
            s.select(sel(b"client_id=c0000000-0000-0000-0000-000000000009", &mut b).unwrap()),
            Err(SelectError::NotFound)
        );
        let mut b = [0u8; 512];
        assert_eq!(
            s.select(sel(b"client_id=", &mut b).unwrap()),
            Err(SelectError::NotFound)
        );
    }

    #[test]
    fn selectors_are_exclusive() {
        for q in [
            &b"client_id=a&object_id=b"[..],
            b"object_id=a&principal_id=a",
            b"msi_res_id=a&mi_res_id=a",
            b"client_id=a&mi_res_id=b",
        ] {
            let mut b = [0u8; 512];
            assert_eq!(sel(q, &mut b), Err(SelectError::MultipleSelectors), "{q:?}");
        }
    }
}
