//! Which `/metadata/instance` fields each api-version has: `instance-since.json` (INSTANCE.md
//! §1.3) as Rust constants. A unit test reads the JSON (`agent/tests-data/instance-since.json`, a
//! copy of `shared/instance-since.json`) and checks these tables equal it.
//!
//! The tables are plain strings (no table of pointers in the image): [`SUPPORTED`] is the
//! api-versions, 10 bytes each, separated by a space; [`SINCE`] is one line per field, the
//! api-version it appeared in followed by its path.

/// The api-versions `/metadata/instance` accepts, oldest first.
pub const SUPPORTED: &str = "\
    2017-03-01 \
    2017-04-02 \
    2017-08-01 \
    2017-10-01 \
    2017-12-01 \
    2018-02-01 \
    2018-04-02 \
    2018-10-01 \
    2019-02-01 \
    2019-03-11 \
    2019-04-30 \
    2019-06-01 \
    2019-06-04 \
    2019-08-01 \
    2019-08-15 \
    2019-11-01 \
    2020-06-01 \
    2020-07-15 \
    2020-09-01 \
    2020-10-01 \
    2020-12-01 \
    2021-01-01 \
    2021-02-01 \
    2021-03-01 \
    2021-05-01 \
    2021-08-01 \
    2021-10-01 \
    2021-11-01 \
    2021-11-15 \
    2021-12-13 \
    2023-07-01 \
    2023-11-15 \
    2024-03-15 \
    2024-07-17 \
    2025-04-07";

/// What a 400 for a bad api-version names as `newest-versions` (newest first).
pub const NEWEST: [&str; 3] = ["2025-04-07", "2024-07-17", "2024-03-15"];

/// `<api-version it appeared in><path>` per line: paths below `/metadata/instance`,
/// `.`-separated, `[]` for every element of an array. A field not listed is served whenever
/// its parent is.
pub const SINCE: &str = "\
    2017-04-02compute\n\
    2017-04-02network\n\
    2021-11-01compute.additionalCapabilities\n\
    2018-10-01compute.azEnvironment\n\
    2019-02-01compute.customData\n\
    2020-12-01compute.evictionPolicy\n\
    2021-03-01compute.extendedLocation\n\
    2021-11-15compute.host\n\
    2021-11-15compute.hostGroup\n\
    2020-06-01compute.isHostCompatibilityLayerVm\n\
    2020-09-01compute.licenseType\n\
    2017-04-02compute.location\n\
    2017-04-02compute.name\n\
    2017-04-02compute.offer\n\
    2020-07-15compute.osProfile\n\
    2020-10-01compute.osProfile.disablePasswordAuthentication\n\
    2017-04-02compute.osType\n\
    2023-11-15compute.physicalZone\n\
    2017-08-01compute.placementGroupId\n\
    2018-04-02compute.plan\n\
    2017-04-02compute.platformFaultDomain\n\
    2021-10-01compute.platformSubFaultDomain\n\
    2017-04-02compute.platformUpdateDomain\n\
    2020-12-01compute.priority\n\
    2018-10-01compute.provider\n\
    2018-04-02compute.publicKeys\n\
    2017-04-02compute.publisher\n\
    2017-08-01compute.resourceGroupName\n\
    2019-03-11compute.resourceId\n\
    2020-06-01compute.securityProfile\n\
    2021-11-01compute.securityProfile.encryptionAtHost\n\
    2021-12-13compute.securityProfile.securityType\n\
    2017-04-02compute.sku\n\
    2019-06-01compute.storageProfile\n\
    2023-07-01compute.storageProfile.imageReference.communityGalleryImageId\n\
    2023-07-01compute.storageProfile.imageReference.sharedGalleryImageId\n\
    2023-07-01compute.storageProfile.imageReference.exactVersion\n\
    2021-05-01compute.storageProfile.dataDisks[].isUltraDisk\n\
    2021-05-01compute.storageProfile.dataDisks[].bytesPerSecondThrottle\n\
    2021-05-01compute.storageProfile.dataDisks[].diskCapacityBytes\n\
    2021-05-01compute.storageProfile.dataDisks[].isSharedDisk\n\
    2021-05-01compute.storageProfile.dataDisks[].opsPerSecondThrottle\n\
    2021-02-01compute.storageProfile.resourceDisk\n\
    2017-08-01compute.subscriptionId\n\
    2017-08-01compute.tags\n\
    2019-06-04compute.tagsList\n\
    2021-01-01compute.userData\n\
    2017-04-02compute.version\n\
    2021-03-01compute.virtualMachineScaleSet\n\
    2017-04-02compute.vmId\n\
    2017-12-01compute.vmScaleSetName\n\
    2017-04-02compute.vmSize\n\
    2017-12-01compute.zone\n\
";

/// Length of an api-version (`YYYY-MM-DD`).
const V: usize = 10;

/// The supported api-versions, oldest first.
pub fn supported_versions() -> impl Iterator<Item = &'static str> {
    (0..SUPPORTED.len().div_ceil(V + 1)).map(|i| &SUPPORTED[i * (V + 1)..i * (V + 1) + V])
}

/// `version` as its entry of [`SUPPORTED`] (`None`: not supported).
pub fn supported(version: &str) -> Option<&'static str> {
    supported_versions().find(|v| *v == version)
}

/// The `(path, api-version)` entries of [`SINCE`].
pub fn since_entries() -> impl Iterator<Item = (&'static str, &'static str)> {
    SINCE
        .split_terminator('\n')
        .map(|line| (&line[V..], &line[..V]))
}

/// Whether the field at `path` exists at `version` (a supported api-version: `YYYY-MM-DD`
/// strings order as the dates do).
pub fn visible(path: &str, version: &str) -> bool {
    match since_entries().find(|(p, _)| *p == path) {
        Some((_, since)) => since <= version,
        None => true,
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

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
        assert_eq!(list("supported"), supported_versions().collect::<Vec<_>>());
        assert_eq!(list("newest_versions"), NEWEST);
        let mut theirs: Vec<(String, String)> = j["since"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let mut ours: Vec<(String, String)> = since_entries()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        let mut sorted: Vec<_> = supported_versions().collect();
        sorted.sort();
        assert_eq!(
            sorted,
            supported_versions().collect::<Vec<_>>(),
            "oldest first"
        );
    }

    #[test]
    fn gating() {
        assert!(visible("compute.vmId", "2017-04-02"));
        assert!(!visible("compute.userData", "2017-08-01"));
        assert!(visible("compute.userData", "2021-01-01"));
        assert!(visible("compute.somethingNew", "2017-03-01"));
        assert!(!visible("compute", "2017-03-01"));
        assert!(!visible(
            "compute.storageProfile.dataDisks[].isUltraDisk",
            "2021-02-01"
        ));
        assert_eq!(supported("2021-02-01"), Some("2021-02-01"));
        assert_eq!(supported("2025-04-07"), Some("2025-04-07"));
        assert_eq!(supported("2017-03-01"), Some("2017-03-01"));
        assert_eq!(supported("2022-02-01"), None);
        assert_eq!(supported("2021-02-0"), None);
    }
}
