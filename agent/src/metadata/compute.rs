//! The `instance.compute` values the attested document and scheduled events carry.

use crate::limits::COMPUTE_FIELD_MAX;

type Field = heapless::String<COMPUTE_FIELD_MAX>;

/// The `instance.compute` values the attested document and scheduled events carry.
///
/// Read once from the stored `instance` document when the config is parsed
/// ([`Compute::from_instance`]): the routes ask [`crate::agent::Agent::compute_field`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compute {
    /// `compute.vmId`.
    pub vm_id: Field,
    /// `compute.name` (the scheduled events' `Resources`).
    pub name: Field,
    /// `compute.subscriptionId`.
    pub subscription_id: Field,
    /// `compute.sku`.
    pub sku: Field,
    /// `compute.licenseType`.
    pub license_type: Field,
    /// `compute.plan.name`.
    pub plan_name: Field,
    /// `compute.plan.product`.
    pub plan_product: Field,
    /// `compute.plan.publisher`.
    pub plan_publisher: Field,
}

/// The `compute` fields [`Compute`] carries, by their path below `compute`.
const COMPUTE_FIELDS: [&str; 8] = [
    "vmId",
    "name",
    "subscriptionId",
    "sku",
    "licenseType",
    "plan/name",
    "plan/product",
    "plan/publisher",
];

impl Compute {
    /// The fields read from the config's stored `instance` document (compact JSON; empty: no
    /// `instance`), as a text leaf at the newest api-version. Err: the name of a field longer
    /// than [`COMPUTE_FIELD_MAX`] (a config error: it would be served cut).
    pub fn from_instance(doc: &[u8]) -> Result<Compute, &'static str> {
        use super::instance::{render, Kind, Query, Sink};
        let mut c = Compute::default();
        if doc.is_empty() {
            return Ok(c);
        }
        let mut path: heapless::String<24> = heapless::String::new();
        for name in COMPUTE_FIELDS {
            path.clear();
            let _ = path.push_str("compute/");
            let _ = path.push_str(name);
            let mut buf = [0u8; COMPUTE_FIELD_MAX];
            let q = Query {
                path: &path,
                version: super::since::NEWEST[0],
                text: true,
                extended: false,
            };
            let Ok((Kind::Text, total, filled)) = render(doc, q, Sink::new(0, &mut buf)) else {
                continue;
            };
            let value = core::str::from_utf8(&buf[..filled]).unwrap_or("");
            if total > COMPUTE_FIELD_MAX {
                return Err(name);
            }
            let slot = match name {
                "vmId" => &mut c.vm_id,
                "name" => &mut c.name,
                "subscriptionId" => &mut c.subscription_id,
                "sku" => &mut c.sku,
                "licenseType" => &mut c.license_type,
                "plan/name" => &mut c.plan_name,
                "plan/product" => &mut c.plan_product,
                _ => &mut c.plan_publisher,
            };
            let _ = slot.push_str(value);
        }
        Ok(c)
    }

    /// A value by its path below `compute` (`vmId`, `plan/name`, ...); `None` when empty.
    pub fn field(&self, name: &str) -> Option<&str> {
        let v = match name {
            "vmId" => &self.vm_id,
            "name" => &self.name,
            "subscriptionId" => &self.subscription_id,
            "sku" => &self.sku,
            "licenseType" => &self.license_type,
            "plan/name" => &self.plan_name,
            "plan/product" => &self.plan_product,
            "plan/publisher" => &self.plan_publisher,
            _ => return None,
        };
        (!v.is_empty()).then_some(v.as_str())
    }
}
