//! Which `/metadata/instance` fields each api-version has: `instance-since.json` (INSTANCE.md
//! §1.3) as Rust constants. A unit test reads the JSON (`agent/tests-data/instance-since.json`, a
//! copy of `shared/instance-since.json`) and checks these tables equal it.
//!
//! The tables are plain strings (no table of pointers in the image): [`SUPPORTED`] is the
//! api-versions, 10 bytes each, separated by a space; [`SINCE`] is one line per field, a letter
//! for the api-version it appeared in followed by its path.

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

/// One line per field: the api-version it appeared in (a letter: `A` is the first entry of
/// [`SUPPORTED`], `B` the second, … `Z`, then `a`, …) then its path below `/metadata/instance`, `.`-separated,
/// `[]` for every element of an array, a leading `.` for `compute.`. A field not listed is
/// served whenever its parent is.
pub const SINCE: &str = concat!(
    "Bcompute\n",                                                // 2017-04-02
    "Bnetwork\n",                                                // 2017-04-02
    "b.additionalCapabilities\n",                                // 2021-11-01
    "H.azEnvironment\n",                                         // 2018-10-01
    "I.customData\n",                                            // 2019-02-01
    "U.evictionPolicy\n",                                        // 2020-12-01
    "X.extendedLocation\n",                                      // 2021-03-01
    "c.host\n",                                                  // 2021-11-15
    "c.hostGroup\n",                                             // 2021-11-15
    "Q.isHostCompatibilityLayerVm\n",                            // 2020-06-01
    "S.licenseType\n",                                           // 2020-09-01
    "B.location\n",                                              // 2017-04-02
    "B.name\n",                                                  // 2017-04-02
    "B.offer\n",                                                 // 2017-04-02
    "R.osProfile\n",                                             // 2020-07-15
    "T.osProfile.disablePasswordAuthentication\n",               // 2020-10-01
    "B.osType\n",                                                // 2017-04-02
    "f.physicalZone\n",                                          // 2023-11-15
    "C.placementGroupId\n",                                      // 2017-08-01
    "G.plan\n",                                                  // 2018-04-02
    "B.platformFaultDomain\n",                                   // 2017-04-02
    "a.platformSubFaultDomain\n",                                // 2021-10-01
    "B.platformUpdateDomain\n",                                  // 2017-04-02
    "U.priority\n",                                              // 2020-12-01
    "H.provider\n",                                              // 2018-10-01
    "G.publicKeys\n",                                            // 2018-04-02
    "B.publisher\n",                                             // 2017-04-02
    "C.resourceGroupName\n",                                     // 2017-08-01
    "J.resourceId\n",                                            // 2019-03-11
    "Q.securityProfile\n",                                       // 2020-06-01
    "b.securityProfile.encryptionAtHost\n",                      // 2021-11-01
    "d.securityProfile.securityType\n",                          // 2021-12-13
    "B.sku\n",                                                   // 2017-04-02
    "L.storageProfile\n",                                        // 2019-06-01
    "e.storageProfile.imageReference.communityGalleryImageId\n", // 2023-07-01
    "e.storageProfile.imageReference.sharedGalleryImageId\n",    // 2023-07-01
    "e.storageProfile.imageReference.exactVersion\n",            // 2023-07-01
    "Y.storageProfile.dataDisks[].isUltraDisk\n",                // 2021-05-01
    "Y.storageProfile.dataDisks[].bytesPerSecondThrottle\n",     // 2021-05-01
    "Y.storageProfile.dataDisks[].diskCapacityBytes\n",          // 2021-05-01
    "Y.storageProfile.dataDisks[].isSharedDisk\n",               // 2021-05-01
    "Y.storageProfile.dataDisks[].opsPerSecondThrottle\n",       // 2021-05-01
    "W.storageProfile.resourceDisk\n",                           // 2021-02-01
    "C.subscriptionId\n",                                        // 2017-08-01
    "C.tags\n",                                                  // 2017-08-01
    "M.tagsList\n",                                              // 2019-06-04
    "V.userData\n",                                              // 2021-01-01
    "B.version\n",                                               // 2017-04-02
    "X.virtualMachineScaleSet\n",                                // 2021-03-01
    "B.vmId\n",                                                  // 2017-04-02
    "E.vmScaleSetName\n",                                        // 2017-12-01
    "B.vmSize\n",                                                // 2017-04-02
    "E.zone\n",                                                  // 2017-12-01
);

/// Length of an api-version (`YYYY-MM-DD`).
const V: usize = 10;

/// The supported api-versions, oldest first.
pub fn supported_versions() -> impl Iterator<Item = &'static str> {
    (0..SUPPORTED.len().div_ceil(V + 1)).map(|i| &SUPPORTED[i * (V + 1)..i * (V + 1) + V])
}

/// `version` as its entry of [`SUPPORTED`] (`None`: not supported).
pub fn supported(version: &str) -> Option<&'static str> {
    supported_versions().nth(index(version))
}

/// The index into [`SUPPORTED`] a letter of [`SINCE`] stands for.
const fn letter_index(c: u8) -> usize {
    (if c >= b'a' { c - b'a' + 26 } else { c - b'A' }) as usize
}

/// The index into [`SUPPORTED`] of the newest api-version a field of [`SINCE`] appeared in:
/// from it on, every field is visible (computed when compiling).
const ALL_VISIBLE_AT: usize = {
    let s = SINCE.as_bytes();
    let (mut i, mut newest, mut line_start) = (0, 0, true);
    while i < s.len() {
        if line_start && letter_index(s[i]) > newest {
            newest = letter_index(s[i]);
        }
        line_start = s[i] == b'\n';
        i += 1;
    }
    newest
};

/// `version`'s index into [`SUPPORTED`], for [`visible`] (an unsupported one: past the last,
/// where every field is visible).
pub fn index(version: &str) -> usize {
    supported_versions()
        .position(|v| v == version)
        .unwrap_or(usize::MAX)
}

/// Whether nothing is hidden at the api-version of [`index`] `at` (the newest ones, and the
/// config reader's loads): [`visible`] is then always true and need not be asked.
pub fn all_visible(at: usize) -> bool {
    at >= ALL_VISIBLE_AT
}

/// How many lines [`SINCE`] has.
const LINES: usize = {
    let (s, mut i, mut n) = (SINCE.as_bytes(), 0, 0);
    while i < s.len() {
        if s[i] == b'\n' {
            n += 1;
        }
        i += 1;
    }
    n
};

/// Where each line of [`SINCE`] starts, then its length (computed when compiling): a lookup
/// compares lengths first instead of scanning the table's bytes.
const STARTS: [u16; LINES + 1] = {
    assert!(SINCE.len() <= u16::MAX as usize);
    let (s, mut i, mut starts, mut n) = (SINCE.as_bytes(), 0, [0u16; LINES + 1], 1);
    while i < s.len() {
        if s[i] == b'\n' {
            starts[n] = i as u16 + 1;
            n += 1;
        }
        i += 1;
    }
    starts
};

/// Whether the field at `path` exists at the api-version of [`index`] `at`.
pub fn visible(path: &str, at: usize) -> bool {
    let (path, sub) = (
        path.as_bytes(),
        path.strip_prefix("compute.").map(str::as_bytes),
    );
    for pair in STARTS.windows(2) {
        // The line without its `\n`: the letter, then the entry.
        let line = &SINCE.as_bytes()[usize::from(pair[0])..usize::from(pair[1]) - 1];
        let matches = match line {
            [_, b'.', entry @ ..] => sub == Some(entry),
            [_, entry @ ..] => path == entry,
            [] => false,
        };
        if matches {
            return letter_index(line[0]) <= at;
        }
    }
    true
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
        let versions: Vec<&str> = supported_versions().collect();
        let mut ours: Vec<(String, String)> = SINCE
            .split_terminator('\n')
            .map(|line| {
                let v = versions[letter_index(line.as_bytes()[0])];
                let path = match line[1..].strip_prefix('.') {
                    Some(sub) => std::format!("compute.{sub}"),
                    None => line[1..].to_string(),
                };
                (path, v.to_string())
            })
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
        let visible = |path: &str, version: &str| visible(path, index(version));
        assert!(visible("compute.vmId", "2017-04-02"));
        assert!(!visible("compute.userData", "2017-08-01"));
        assert!(visible("compute.userData", "2021-01-01"));
        assert!(visible("compute.somethingNew", "2017-03-01"));
        assert!(!visible("compute", "2017-03-01"));
        assert!(!visible(
            "compute.storageProfile.dataDisks[].isUltraDisk",
            "2021-02-01"
        ));
        assert!(visible("compute.physicalZone", "2023-11-15"));
        assert!(!visible("compute.physicalZone", "2023-07-01"));
        // From the newest field's api-version on, nothing is hidden (no lookup is needed).
        assert_eq!(supported_versions().nth(ALL_VISIBLE_AT), Some("2023-11-15"));
        assert!(!all_visible(index("2023-07-01")));
        assert!(all_visible(index("2023-11-15")) && all_visible(index(NEWEST[0])));
        assert!(
            all_visible(index("2022-02-01")),
            "unsupported: nothing hidden"
        );
        assert_eq!(supported("2021-02-01"), Some("2021-02-01"));
        assert_eq!(supported("2025-04-07"), Some("2025-04-07"));
        assert_eq!(supported("2017-03-01"), Some("2017-03-01"));
        assert_eq!(supported("2022-02-01"), None);
        assert_eq!(supported("2021-02-0"), None);
    }
}
