//! Which `/metadata/instance` fields each api-version has: `instance-since.json` (INSTANCE.md
//! §1.3) as Rust tables. A unit test reads the JSON (`agent/tests-data/instance-since.json`, a
//! copy of `shared/instance-since.json`) and checks these tables equal it.

/// The api-versions `/metadata/instance` accepts, oldest first.
pub const SUPPORTED: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2024-07-17",
    "2025-04-07",
];

/// What a 400 for a bad api-version names as `newest-versions` (newest first).
pub const NEWEST: [&str; 3] = ["2025-04-07", "2024-07-17", "2024-03-15"];

/// `(path, api-version it appeared in)`: paths below `/metadata/instance`, `.`-separated, `[]`
/// for every element of an array. A field not listed is served whenever its parent is.
pub const SINCE: &[(&str, &str)] = &[
    ("compute", "2017-04-02"),
    ("network", "2017-04-02"),
    ("compute.additionalCapabilities", "2021-11-01"),
    ("compute.azEnvironment", "2018-10-01"),
    ("compute.customData", "2019-02-01"),
    ("compute.evictionPolicy", "2020-12-01"),
    ("compute.extendedLocation", "2021-03-01"),
    ("compute.host", "2021-11-15"),
    ("compute.hostGroup", "2021-11-15"),
    ("compute.isHostCompatibilityLayerVm", "2020-06-01"),
    ("compute.licenseType", "2020-09-01"),
    ("compute.location", "2017-04-02"),
    ("compute.name", "2017-04-02"),
    ("compute.offer", "2017-04-02"),
    ("compute.osProfile", "2020-07-15"),
    (
        "compute.osProfile.disablePasswordAuthentication",
        "2020-10-01",
    ),
    ("compute.osType", "2017-04-02"),
    ("compute.physicalZone", "2023-11-15"),
    ("compute.placementGroupId", "2017-08-01"),
    ("compute.plan", "2018-04-02"),
    ("compute.platformFaultDomain", "2017-04-02"),
    ("compute.platformSubFaultDomain", "2021-10-01"),
    ("compute.platformUpdateDomain", "2017-04-02"),
    ("compute.priority", "2020-12-01"),
    ("compute.provider", "2018-10-01"),
    ("compute.publicKeys", "2018-04-02"),
    ("compute.publisher", "2017-04-02"),
    ("compute.resourceGroupName", "2017-08-01"),
    ("compute.resourceId", "2019-03-11"),
    ("compute.securityProfile", "2020-06-01"),
    ("compute.securityProfile.encryptionAtHost", "2021-11-01"),
    ("compute.securityProfile.securityType", "2021-12-13"),
    ("compute.sku", "2017-04-02"),
    ("compute.storageProfile", "2019-06-01"),
    (
        "compute.storageProfile.imageReference.communityGalleryImageId",
        "2023-07-01",
    ),
    (
        "compute.storageProfile.imageReference.sharedGalleryImageId",
        "2023-07-01",
    ),
    (
        "compute.storageProfile.imageReference.exactVersion",
        "2023-07-01",
    ),
    (
        "compute.storageProfile.dataDisks[].isUltraDisk",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].bytesPerSecondThrottle",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].diskCapacityBytes",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].isSharedDisk",
        "2021-05-01",
    ),
    (
        "compute.storageProfile.dataDisks[].opsPerSecondThrottle",
        "2021-05-01",
    ),
    ("compute.storageProfile.resourceDisk", "2021-02-01"),
    ("compute.subscriptionId", "2017-08-01"),
    ("compute.tags", "2017-08-01"),
    ("compute.tagsList", "2019-06-04"),
    ("compute.userData", "2021-01-01"),
    ("compute.version", "2017-04-02"),
    ("compute.virtualMachineScaleSet", "2021-03-01"),
    ("compute.vmId", "2017-04-02"),
    ("compute.vmScaleSetName", "2017-12-01"),
    ("compute.vmSize", "2017-04-02"),
    ("compute.zone", "2017-12-01"),
];

/// Whether the field at `path` exists at `version` (a supported api-version: `YYYY-MM-DD`
/// strings order as the dates do).
pub fn visible(path: &str, version: &str) -> bool {
    match SINCE.iter().find(|(p, _)| *p == path) {
        Some((_, since)) => *since <= version,
        None => true,
    }
}

/// `version` as its entry of [`SUPPORTED`] (`None`: not supported).
pub fn supported(version: &str) -> Option<&'static str> {
    SUPPORTED.iter().copied().find(|v| *v == version)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn tables_equal_the_json_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests-data/instance-since.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        let list = |k: &str| -> Vec<String> {
            j[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(list("supported"), SUPPORTED);
        assert_eq!(list("newest_versions"), NEWEST);
        let since: Vec<(String, String)> = j["since"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let mut ours: Vec<(String, String)> = SINCE
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut theirs = since;
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        let mut sorted = SUPPORTED.to_vec();
        sorted.sort();
        assert_eq!(sorted, SUPPORTED, "oldest first");
    }

    #[test]
    fn gating() {
        assert!(visible("compute.vmId", "2017-04-02"));
        assert!(!visible("compute.userData", "2017-08-01"));
        assert!(visible("compute.userData", "2021-01-01"));
        assert!(visible("compute.somethingNew", "2017-03-01"));
        assert!(!visible("compute", "2017-03-01"));
        assert_eq!(supported("2021-02-01"), Some("2021-02-01"));
        assert_eq!(supported("2022-02-01"), None);
    }
}
