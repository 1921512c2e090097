//! `cargo xtask config --demo --out FILE [--user-data FILE]`: a ready configuration with fresh
//! keys, and (issue 12) a realistic, consistent Azure instance-metadata document with an
//! attestation signer.

use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use std::path::Path;

/// A random GUID (version 4 layout).
pub fn guid() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    imds_agent::config::guid_v4(b).as_str().to_string()
}

/// A fresh P-256 private key as PKCS#8 PEM.
pub fn p256_pem() -> String {
    let key = p256::SecretKey::random(&mut OsRng);
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("PKCS#8 encoding")
        .to_string()
}

/// The demo VM's name (the last segment of the system-assigned identity's `resource_id`).
pub const DEMO_VM: &str = "demo-vm";
/// The demo's resource group.
pub const DEMO_RESOURCE_GROUP: &str = "imds-demo";
/// The demo VM's admin user (`compute.osProfile.adminUsername`).
pub const DEMO_ADMIN: &str = "azureuser";
/// The demo VM's NIC, as QEMU's user networking (`-netdev user`) gives it: MAC
/// `52:54:00:12:34:56`, guest `10.0.2.15` in `10.0.2.0/24`.
pub const DEMO_MAC: &str = "525400123456";
pub const DEMO_IP: &str = "10.0.2.15";
pub const DEMO_SUBNET: &str = "10.0.2.0";
pub const DEMO_PREFIX: &str = "24";
/// The subject (and DNS name) of the demo's self-signed attestation certificate.
pub const DEMO_ATTESTATION_CN: &str = "demo.metadata.azure.com";

/// User data when `--user-data` is not given: a small cloud-config.
pub const DEMO_USER_DATA: &str = "#cloud-config\n\
# imds-agent demo: user data served as compute.userData (base64)\n\
write_files:\n\
  - path: /run/imds-demo\n\
    content: served by imds-agent\n";

/// The demo document: one system-assigned and two user-assigned identities, issuer mode. The
/// tests build their configs on it; `cargo xtask config --demo` and `cargo xtask run` write
/// [`demo_full`].
pub fn demo(listen_imds: &str, listen_legacy: Option<&str>) -> Value {
    let tenant = guid();
    let sub = guid();
    let rg = DEMO_RESOURCE_GROUP;
    let user = |name: &str| {
        json!({
            "kind": "user",
            "client_id": guid(),
            "object_id": guid(),
            "resource_id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"),
        })
    };
    json!({
        "tenant_id": tenant,
        "issuer": format!("https://sts.windows.net/{tenant}/"),
        "token_lifetime_s": 86400,
        "refresh_margin_s": 300,
        "signing_key": p256_pem(),
        "listen": { "imds": listen_imds, "legacy": listen_legacy },
        "identities": [
            {
                "kind": "system",
                "client_id": guid(),
                "object_id": guid(),
                "resource_id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{DEMO_VM}"),
            },
            user("demo-one"),
            user("demo-two"),
        ]
    })
}

/// A fresh secret for an `app_service` / `azure_ml` endpoint: 32 random bytes as hex.
pub fn host_secret() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Adds the other Azure hosts' endpoints (issue 13) to a config document: `app_service` and
/// `azure_ml` on the given listen addresses, each with a fresh secret.
pub fn with_hosts(mut doc: Value, app_service: &str, azure_ml: &str) -> Value {
    doc["app_service"] = json!({ "listen": app_service, "secret": host_secret() });
    doc["azure_ml"] = json!({ "listen": azure_ml, "secret": host_secret() });
    doc
}

/// A free loopback port (bound and released: the daemon binds it again soon after).
fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `cargo xtask config --demo --hosts`: adds `app_service`, `azure_ml` and `arc` (key files
/// in `/var/opt/azcmagent/tokens`, the only place real clients read them) on free loopback
/// ports, with fresh secrets. Returns the document and the shell lines that set each
/// protocol's environment variables (`legacy`: the legacy listener, for Cloud Shell).
pub fn with_all_hosts(doc: Value, legacy: Option<&str>) -> std::io::Result<(Value, String)> {
    let [app, ml, arc] = [
        free_loopback_port()?,
        free_loopback_port()?,
        free_loopback_port()?,
    ];
    let mut doc = with_hosts(doc, &format!("127.0.0.1:{app}"), &format!("127.0.0.1:{ml}"));
    doc["arc"] = json!({
        "listen": format!("127.0.0.1:{arc}"),
        "key_dir": imds_agent::config::DEFAULT_ARC_KEY_DIR,
    });
    let secret = |k: &str| doc[k]["secret"].as_str().unwrap_or_default().to_string();
    let mut env = format!(
        "# App Service / Functions\n\
         export IDENTITY_ENDPOINT=http://127.0.0.1:{app}/msi/token IDENTITY_HEADER={}\n\
         # Azure ML\n\
         export MSI_ENDPOINT=http://127.0.0.1:{ml}/msi/token MSI_SECRET={}\n\
         # Azure Arc (the daemon writes key files to {}: run it as root)\n\
         export IDENTITY_ENDPOINT=http://127.0.0.1:{arc}/metadata/identity/oauth2/token IMDS_ENDPOINT=http://127.0.0.1:{arc}\n",
        secret("app_service"),
        secret("azure_ml"),
        imds_agent::config::DEFAULT_ARC_KEY_DIR,
    );
    if let Some(l) = legacy {
        env.push_str(&format!(
            "# Cloud Shell (the legacy listener)\nexport MSI_ENDPOINT=http://{l}/oauth2/token\n"
        ));
    }
    Ok((doc, env))
}

/// [`demo`] with the VM's instance metadata and an attestation signer (see [`with_instance`]),
/// `user_data` served base64-encoded as `compute.userData`: what `cargo xtask config --demo`
/// writes.
pub fn demo_full(
    listen_imds: &str,
    listen_legacy: Option<&str>,
    user_data: &[u8],
    attestation: bool,
) -> Value {
    with_instance(demo(listen_imds, listen_legacy), user_data, attestation)
}

/// Adds `instance` (see [`demo_instance`]) and, with `attestation`, an attestation signer (see
/// [`demo_attestation`]) to a demo document. The default image has no attested document and
/// refuses a config with `attestation`: the host daemon and an image built with `--features
/// attested` serve it.
pub fn with_instance(mut doc: Value, user_data: &[u8], attestation: bool) -> Value {
    let resource_id = doc["identities"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["kind"] == "system"))
        .and_then(|i| i["resource_id"].as_str())
        .expect("the demo has a system-assigned identity")
        .to_string();
    doc["instance"] = demo_instance(&resource_id, user_data, &demo_ssh_public_key());
    if attestation {
        doc["attestation"] = demo_attestation();
    }
    doc
}

/// Whether the agent's own config parser accepts `doc`.
pub fn agent_accepts(doc: &Value) -> bool {
    let bytes = serde_json::to_vec(doc).expect("json");
    imds_agent::config::Config::parse(&bytes).is_ok()
}

/// A fresh Ed25519 SSH public key in OpenSSH format (`ssh-ed25519 AAAA… imds-demo`). The
/// private half is thrown away: the demo only needs a well-formed key to serve.
pub fn demo_ssh_public_key() -> String {
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .expect("32-byte Ed25519 key");
    let key = ssh_key::PublicKey::new(
        ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(public)),
        "imds-demo",
    );
    key.to_openssh().expect("OpenSSH encoding")
}

/// The attested document's signer: a fresh P-256 key (PKCS#8 PEM) and a self-signed
/// certificate for it, `CN=demo.metadata.azure.com`.
pub fn demo_attestation() -> Value {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let mut params =
        rcgen::CertificateParams::new(vec![DEMO_ATTESTATION_CN.to_string()]).expect("params");
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, DEMO_ATTESTATION_CN);
    params.distinguished_name = dn;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).expect("self-signed certificate");
    json!({ "key": key.serialize_pem(), "certificate": cert.pem() })
}

/// The parts of an ARM resource id `/subscriptions/S/resourceGroups/G/providers/P/T/N`:
/// (S, G, N).
fn resource_id_parts(resource_id: &str) -> (String, String, String) {
    let seg: Vec<&str> = resource_id.trim_start_matches('/').split('/').collect();
    let after = |key: &str| {
        seg.iter()
            .position(|s| s.eq_ignore_ascii_case(key))
            .and_then(|i| seg.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    (
        after("subscriptions"),
        after("resourceGroups"),
        seg.last().map(|s| s.to_string()).unwrap_or_default(),
    )
}

/// The `instance` document, in Azure's shape for the newest api-version (INSTANCE.md §1.3),
/// every leaf a string: the VM of the system-assigned identity `resource_id` (subscription,
/// resource group and name taken from it), a fresh `vmId`, `ssh_public_key` (OpenSSH) for the
/// admin user, `user_data` base64-encoded, and the NIC QEMU's user networking gives the guest.
pub fn demo_instance(resource_id: &str, user_data: &[u8], ssh_public_key: &str) -> Value {
    use base64::Engine as _;
    let (sub, rg, name) = resource_id_parts(resource_id);
    let vm_id = guid();
    let location = "westeurope";
    let (publisher, offer, sku, version) = ("Debian", "debian-12", "12-gen2", "0.20241201.1942");
    let os_disk = format!("{name}_OsDisk_1_{}", guid().replace('-', ""));
    let tags = [("environment", "demo"), ("owner", "imds-agent")];
    let storage_profile = json!({
        "dataDisks": [],
        "imageReference": {
            "communityGalleryImageId": "",
            "exactVersion": version,
            "id": "",
            "offer": offer,
            "publisher": publisher,
            "sharedGalleryImageId": "",
            "sku": sku,
            "version": "latest"
        },
        "osDisk": {
            "caching": "ReadWrite",
            "createOption": "FromImage",
            "diffDiskSettings": { "option": "" },
            "diskSizeGB": "30",
            "encryptionSettings": { "enabled": "false" },
            "image": { "uri": "" },
            "managedDisk": {
                "id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{os_disk}"),
                "storageAccountType": "Premium_LRS"
            },
            "name": os_disk,
            "osType": "Linux",
            "vhd": { "uri": "" },
            "writeAcceleratorEnabled": "false"
        },
        "resourceDisk": { "size": "0" }
    });
    json!({
        "compute": {
            "additionalCapabilities": { "hibernationEnabled": "false" },
            "azEnvironment": "AzurePublicCloud",
            "customData": "",
            "evictionPolicy": "",
            "extendedLocation": { "type": "", "name": "" },
            "host": { "id": "" },
            "hostGroup": { "id": "" },
            "isHostCompatibilityLayerVm": "false",
            "licenseType": "",
            "location": location,
            "name": name,
            "offer": offer,
            "osProfile": {
                "adminUsername": DEMO_ADMIN,
                "computerName": name,
                "disablePasswordAuthentication": "true"
            },
            "osType": "Linux",
            "physicalZone": "",
            "placementGroupId": "",
            "plan": { "name": "", "product": "", "publisher": "" },
            "platformFaultDomain": "0",
            "platformSubFaultDomain": "",
            "platformUpdateDomain": "0",
            "priority": "Regular",
            "provider": "Microsoft.Compute",
            "publicKeys": [{
                "keyData": ssh_public_key,
                "path": format!("/home/{DEMO_ADMIN}/.ssh/authorized_keys")
            }],
            "publisher": publisher,
            "resourceGroupName": rg,
            "resourceId": resource_id,
            "securityProfile": {
                "secureBootEnabled": "true",
                "virtualTpmEnabled": "true",
                "encryptionAtHost": "false",
                "securityType": "TrustedLaunch"
            },
            "sku": sku,
            "storageProfile": storage_profile,
            "subscriptionId": sub,
            "tags": tags.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(";"),
            "tagsList": tags.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            "userData": base64::engine::general_purpose::STANDARD.encode(user_data),
            "version": version,
            "virtualMachineScaleSet": { "id": "" },
            "vmId": vm_id,
            "vmScaleSetName": "",
            "vmSize": "Standard_B1s",
            "zone": ""
        },
        "network": {
            "interface": [{
                "ipv4": {
                    "ipAddress": [{ "privateIpAddress": DEMO_IP, "publicIpAddress": "" }],
                    "subnet": [{ "address": DEMO_SUBNET, "prefix": DEMO_PREFIX }]
                },
                "ipv6": { "ipAddress": [] },
                "macAddress": DEMO_MAC
            }]
        }
    })
}

/// Write [`demo`] to `out` (mode 0600).
pub fn write_demo(
    out: &Path,
    listen_imds: &str,
    listen_legacy: Option<&str>,
) -> std::io::Result<()> {
    write_doc(out, &demo(listen_imds, listen_legacy))
}

/// Write [`demo_full`] to `out` (mode 0600): `cargo xtask config --demo`, `cargo xtask run`.
pub fn write_demo_full(
    out: &Path,
    listen_imds: &str,
    listen_legacy: Option<&str>,
    user_data: &[u8],
    attestation: bool,
) -> std::io::Result<()> {
    write_doc(
        out,
        &demo_full(listen_imds, listen_legacy, user_data, attestation),
    )
}

pub fn write_doc(out: &Path, doc: &Value) -> std::io::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let doc = serde_json::to_string_pretty(doc).expect("json");
    std::fs::write(out, doc)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_hosts_config_parses_and_names_each_protocol() {
        let (doc, env) = with_all_hosts(
            demo("127.0.0.1:0", Some("127.0.0.1:50342")),
            Some("127.0.0.1:50342"),
        )
        .unwrap();
        let bytes = serde_json::to_vec(&doc).unwrap();
        let c = imds_agent::config::Config::parse(&bytes).unwrap();
        let app = c.hosts.app_service.unwrap();
        let ml = c.hosts.azure_ml.unwrap();
        let arc = c.hosts.arc.unwrap();
        assert_ne!(app.secret, ml.secret);
        assert_eq!(app.secret.len(), 64);
        assert!(env.contains(&format!(
            "IDENTITY_ENDPOINT=http://{}/msi/token IDENTITY_HEADER={}",
            app.listen, app.secret
        )));
        assert!(env.contains(&format!(
            "MSI_ENDPOINT=http://{}/msi/token MSI_SECRET={}",
            ml.listen, ml.secret
        )));
        assert!(env.contains(&format!("IMDS_ENDPOINT=http://{}\n", arc.listen)));
        assert_eq!(arc.key_dir.as_str(), "/var/opt/azcmagent/tokens");
        assert!(env.contains("MSI_ENDPOINT=http://127.0.0.1:50342/oauth2/token"));
    }
    use base64::Engine as _;

    fn system_resource_id(doc: &Value) -> String {
        doc["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "system")
            .unwrap()["resource_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Paths of every leaf that is not a string (Azure sends only strings).
    fn non_string_leaves(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    non_string_leaves(x, &format!("{at}/{k}"), out)
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    non_string_leaves(x, &format!("{at}/{i}"), out)
                }
            }
            Value::String(_) => {}
            other => out.push(format!("{at} = {other}")),
        }
    }

    fn instance() -> (String, Value) {
        let rid = system_resource_id(&demo("127.0.0.1:0", None));
        let doc = demo_instance(&rid, b"#cloud-config\n{}\n", &demo_ssh_public_key());
        (rid, doc)
    }

    #[test]
    fn the_instance_is_consistent_with_the_system_identity() {
        let (rid, doc) = instance();
        let c = &doc["compute"];
        assert_eq!(c["resourceId"], rid.as_str());
        let (sub, rg, name) = resource_id_parts(&rid);
        assert!(imds_agent::config::is_guid(&sub), "{sub}");
        assert_eq!(
            rid,
            format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}")
        );
        assert_eq!(c["subscriptionId"], sub.as_str());
        assert_eq!(c["resourceGroupName"], DEMO_RESOURCE_GROUP);
        assert_eq!(c["name"], DEMO_VM);
        assert_eq!(c["osProfile"]["computerName"], DEMO_VM);
        assert_eq!(c["osProfile"]["adminUsername"], DEMO_ADMIN);
        assert_eq!(c["osProfile"]["disablePasswordAuthentication"], "true");
        assert_eq!(c["osType"], "Linux");
        assert_eq!(c["storageProfile"]["osDisk"]["osType"], "Linux");
        assert!(c["storageProfile"]["osDisk"]["managedDisk"]["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/subscriptions/{sub}/resourceGroups/{rg}/")));
        assert!(imds_agent::config::is_guid(c["vmId"].as_str().unwrap()));
        // Fresh per document.
        assert_ne!(instance().1["compute"]["vmId"], c["vmId"]);
        // tags and tagsList say the same.
        let from_list: Vec<String> = c["tagsList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["name"].as_str().unwrap(),
                    t["value"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(c["tags"], from_list.join(";").as_str());
        assert!(!from_list.is_empty());
    }

    #[test]
    fn the_network_is_qemu_user_networking() {
        let (_, doc) = instance();
        let nic = &doc["network"]["interface"][0];
        assert_eq!(doc["network"]["interface"].as_array().unwrap().len(), 1);
        assert_eq!(nic["macAddress"], "525400123456");
        assert_eq!(nic["ipv4"]["ipAddress"][0]["privateIpAddress"], "10.0.2.15");
        assert_eq!(nic["ipv4"]["subnet"][0]["address"], "10.0.2.0");
        assert_eq!(nic["ipv4"]["subnet"][0]["prefix"], "24");
        assert_eq!(nic["ipv6"], json!({"ipAddress": []}));
    }

    #[test]
    fn every_leaf_is_a_string_and_every_documented_field_is_there() {
        let (_, doc) = instance();
        let mut bad = Vec::new();
        non_string_leaves(&doc, "", &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
        let top: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(top, ["compute", "network"]);
        // INSTANCE.md §1.3, compute.
        for field in [
            "additionalCapabilities",
            "azEnvironment",
            "customData",
            "evictionPolicy",
            "extendedLocation",
            "host",
            "hostGroup",
            "isHostCompatibilityLayerVm",
            "licenseType",
            "location",
            "name",
            "offer",
            "osProfile",
            "osType",
            "physicalZone",
            "placementGroupId",
            "plan",
            "platformFaultDomain",
            "platformSubFaultDomain",
            "platformUpdateDomain",
            "priority",
            "provider",
            "publicKeys",
            "publisher",
            "resourceGroupName",
            "resourceId",
            "securityProfile",
            "sku",
            "storageProfile",
            "subscriptionId",
            "tags",
            "tagsList",
            "userData",
            "version",
            "virtualMachineScaleSet",
            "vmId",
            "vmScaleSetName",
            "vmSize",
            "zone",
        ] {
            assert!(doc["compute"].get(field).is_some(), "compute.{field}");
        }
        let c = &doc["compute"];
        for (obj, fields) in [
            ("additionalCapabilities", &["hibernationEnabled"][..]),
            ("extendedLocation", &["type", "name"]),
            (
                "osProfile",
                &[
                    "adminUsername",
                    "computerName",
                    "disablePasswordAuthentication",
                ],
            ),
            ("plan", &["name", "product", "publisher"]),
            (
                "securityProfile",
                &[
                    "secureBootEnabled",
                    "virtualTpmEnabled",
                    "encryptionAtHost",
                    "securityType",
                ],
            ),
            (
                "storageProfile",
                &["imageReference", "osDisk", "dataDisks", "resourceDisk"],
            ),
        ] {
            for f in fields {
                assert!(c[obj].get(*f).is_some(), "compute.{obj}.{f}");
            }
        }
        for f in [
            "id",
            "offer",
            "publisher",
            "sku",
            "version",
            "communityGalleryImageId",
            "sharedGalleryImageId",
            "exactVersion",
        ] {
            assert!(
                c["storageProfile"]["imageReference"].get(f).is_some(),
                "imageReference.{f}"
            );
        }
        for f in [
            "caching",
            "createOption",
            "diffDiskSettings",
            "diskSizeGB",
            "encryptionSettings",
            "image",
            "managedDisk",
            "name",
            "osType",
            "vhd",
            "writeAcceleratorEnabled",
        ] {
            assert!(c["storageProfile"]["osDisk"].get(f).is_some(), "osDisk.{f}");
        }
    }

    #[test]
    fn the_ssh_key_is_openssh_ed25519() {
        let (_, doc) = instance();
        let key = &doc["compute"]["publicKeys"][0];
        assert_eq!(key["path"], "/home/azureuser/.ssh/authorized_keys");
        let text = key["keyData"].as_str().unwrap();
        assert!(
            text.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            "{text}"
        );
        let parsed = ssh_key::PublicKey::from_openssh(text).expect("OpenSSH public key");
        assert_eq!(parsed.algorithm(), ssh_key::Algorithm::Ed25519);
        assert_ne!(demo_ssh_public_key(), text, "fresh per call");
    }

    #[test]
    fn user_data_is_base64_of_the_given_bytes() {
        let rid = system_resource_id(&demo("127.0.0.1:0", None));
        for data in [
            &b"#cloud-config\nhostname: x\n"[..],
            &[0u8, 255, 10, 13][..],
            b"",
        ] {
            let doc = demo_instance(&rid, data, "ssh-ed25519 AAAA x");
            let b64 = doc["compute"]["userData"].as_str().unwrap();
            assert_eq!(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
                data
            );
        }
        assert!(DEMO_USER_DATA.starts_with("#cloud-config\n"));
    }

    #[test]
    fn the_instance_is_well_under_the_unikernels_16_kib() {
        let (_, doc) = instance();
        let compact = serde_json::to_vec(&doc).unwrap();
        assert!(compact.len() < 8 * 1024, "{} bytes", compact.len());
        // With the config around it and an attestation signer, the whole config still fits
        // the agent's CONFIG_MAX.
        let mut cfg = demo("127.0.0.1:0", None);
        cfg["instance"] = doc;
        cfg["attestation"] = demo_attestation();
        let whole = serde_json::to_vec_pretty(&cfg).unwrap();
        assert!(
            whole.len() < imds_agent::limits::CONFIG_MAX / 2,
            "{} bytes",
            whole.len()
        );
    }

    #[test]
    fn the_attestation_signer_is_a_p256_key_and_its_self_signed_certificate() {
        use p256::pkcs8::DecodePrivateKey;
        let a = demo_attestation();
        let key =
            p256::SecretKey::from_pkcs8_pem(a["key"].as_str().unwrap()).expect("P-256 PKCS#8");
        let cert_pem = a["certificate"].as_str().unwrap();
        assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let b64: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        // The certificate carries this key's public point and the demo name.
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(
            contains(&der, point.as_bytes()),
            "public key in the certificate"
        );
        assert!(contains(&der, DEMO_ATTESTATION_CN.as_bytes()));
        // The agent's own PEM readers take both.
        assert!(imds_agent::pem::parse_signing_key(a["key"].as_str().unwrap()).is_ok());
        assert_eq!(
            imds_agent::pem::certificate_der(cert_pem)
                .expect("agent reads the certificate")
                .as_slice(),
            der.as_slice()
        );
    }

    #[test]
    fn the_demo_boots_today_and_carries_instance_metadata_once_the_agent_serves_it() {
        assert!(agent_accepts(&demo("127.0.0.1:0", None)));
        let doc = demo_full("127.0.0.1:0", None, DEMO_USER_DATA.as_bytes(), true);
        assert!(agent_accepts(&doc), "the demo config parses");
        let rid = system_resource_id(&doc);
        for (field, value) in [
            (
                "instance",
                demo_instance(&rid, DEMO_USER_DATA.as_bytes(), &demo_ssh_public_key()),
            ),
            ("attestation", demo_attestation()),
        ] {
            let mut probe = demo("127.0.0.1:0", None);
            probe[field] = value;
            assert_eq!(
                doc.get(field).is_some(),
                agent_accepts(&probe),
                "`{field}` is in the demo exactly when the agent accepts it"
            );
        }
        if let Some(inst) = doc.get("instance") {
            assert_eq!(inst["compute"]["resourceId"], rid.as_str());
            let ud = base64::engine::general_purpose::STANDARD
                .decode(inst["compute"]["userData"].as_str().unwrap())
                .unwrap();
            assert_eq!(ud, DEMO_USER_DATA.as_bytes());
        }
    }
}
