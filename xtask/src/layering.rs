//! The layering rules, checked on the manifests: which workspace crates each library crate may
//! depend on, and which external crates the `no_std` crates may use at run time.
//!
//! Only `[dependencies]` and target-specific `[target.….dependencies]` count (what ships in a
//! kernel); dev-dependencies, build-dependencies and tables for `cfg(loom)` do not. Workspace
//! members that are not library crates (examples, benchmarks, xtask) may depend on anything,
//! and no library crate may depend on them.

use std::collections::BTreeMap;
use std::path::Path;

/// External crates a `no_std` crate may depend on at run time.
pub const NO_STD_EXTERNAL: &[&str] = &["cfg-if", "bitflags", "thiserror", "arrayvec", "memoffset"];

/// Each library crate, whether it is `no_std`, and the workspace crates it may depend on.
pub const LIBRARY_RULES: &[(&str, bool, &[&str])] = &[
    ("swiotlb-core", true, &[]),
    ("xen-abi", true, &[]),
    ("swiotlb-xen-x86-pv", true, &["swiotlb-core", "xen-abi"]),
    ("swiotlb-xen-arm64", true, &["swiotlb-core", "xen-abi"]),
    (
        "swiotlb-xen",
        true,
        &[
            "swiotlb-core",
            "xen-abi",
            "swiotlb-xen-x86-pv",
            "swiotlb-xen-arm64",
        ],
    ),
    ("xen-sim", false, &["swiotlb-core", "xen-abi"]),
    ("swiotlb-xen-virtio", true, &["swiotlb-core"]),
];

/// External crates a `no_std` crate may use beyond [`NO_STD_EXTERNAL`], with the reason: an
/// adapter crate depends on the crate it adapts to.
pub const EXTRA_EXTERNAL: &[(&str, &[&str])] = &[("swiotlb-xen-virtio", &["virtio-drivers"])];

/// One dependency line of a manifest.
#[derive(Debug, PartialEq, Eq)]
pub struct Dependency {
    /// The dependency's name (the key in the table).
    pub name: String,
    /// Whether the line turns on a `std` feature.
    pub enables_std: bool,
}

/// The `package.name` of a manifest.
pub fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if let Some(value) = line.strip_prefix("name").filter(|_| in_package) {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

/// Whether a table header names run-time dependencies that this check covers.
fn is_runtime_dependency_table(header: &str) -> bool {
    header == "[dependencies]"
        || (header.starts_with("[target.")
            && header.ends_with(".dependencies]")
            && !header.contains("loom"))
}

/// The run-time dependencies of a manifest, in the order they appear.
pub fn runtime_dependencies(manifest: &str) -> Vec<Dependency> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            // `[dependencies.name]` declares one dependency as a table of its own.
            if let Some(name) = line
                .strip_prefix("[dependencies.")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                out.push(Dependency {
                    name: name.trim_matches('"').to_owned(),
                    enables_std: false,
                });
                in_table = false;
            } else {
                in_table = is_runtime_dependency_table(line);
            }
            continue;
        }
        if !in_table {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let name = key.split('.').next().unwrap_or("").trim().trim_matches('"');
        if name.is_empty() {
            continue;
        }
        out.push(Dependency {
            name: name.to_owned(),
            enables_std: value.contains("features") && value.contains("\"std\""),
        });
    }
    out
}

/// The member paths listed in the root manifest's `[workspace] members`.
pub fn workspace_members(root_manifest: &str) -> Vec<String> {
    let Some(start) = root_manifest.find("members") else {
        return Vec::new();
    };
    let rest = &root_manifest[start..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    if close < open {
        return Vec::new();
    }
    let without_comments: Vec<&str> = rest[open + 1..close]
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .collect();
    without_comments
        .join(",")
        .split(',')
        .map(|item| item.trim().trim_matches('"'))
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks the rules on a set of packages (name to run-time dependencies), naming every
/// violation.
pub fn check_packages(packages: &BTreeMap<String, Vec<Dependency>>) -> Result<(), String> {
    let mut problems = Vec::new();
    for (name, no_std, allowed) in LIBRARY_RULES {
        let Some(deps) = packages.get(*name) else {
            problems.push(format!("library crate {name} is not a workspace member"));
            continue;
        };
        for dep in deps {
            let internal = packages.contains_key(&dep.name);
            if internal && !allowed.contains(&dep.name.as_str()) {
                problems.push(format!("{name} must not depend on {}", dep.name));
            }
            let extra = EXTRA_EXTERNAL
                .iter()
                .any(|(krate, deps)| krate == name && deps.contains(&dep.name.as_str()));
            if *no_std && !internal && !extra && !NO_STD_EXTERNAL.contains(&dep.name.as_str()) {
                problems.push(format!(
                    "no_std crate {name} depends on {}, which is not one of {}",
                    dep.name,
                    NO_STD_EXTERNAL.join(", ")
                ));
            }
            if *no_std && dep.enables_std {
                problems.push(format!(
                    "no_std crate {name} turns on the std feature of {}",
                    dep.name
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Reads the workspace's manifests under `root` and checks the rules.
pub fn check_workspace(root: &Path) -> Result<(), String> {
    let read = |relative: &Path| {
        std::fs::read_to_string(root.join(relative))
            .map_err(|err| format!("cannot read {}: {err}", relative.display()))
    };
    let mut packages = BTreeMap::new();
    for member in workspace_members(&read(Path::new("Cargo.toml"))?) {
        let relative = Path::new(&member).join("Cargo.toml");
        let manifest = read(&relative)?;
        let name = package_name(&manifest)
            .ok_or_else(|| format!("{} has no package name", relative.display()))?;
        packages.insert(name, runtime_dependencies(&manifest));
    }
    check_packages(&packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[package]
name = "swiotlb-xen-arm64"
version.workspace = true

[features]
alloc = []

[dependencies]
swiotlb-core.workspace = true
xen-abi = { workspace = true } # the ABI
arrayvec.workspace = true

[target.'cfg(target_arch = "aarch64")'.dependencies]
cfg-if = "1"

[target.'cfg(loom)'.dependencies]
loom = "0.7"

[dev-dependencies]
xen-sim.workspace = true
proptest = "1"

[dependencies.bitflags]
version = "2"
"#;

    fn dep(name: &str) -> Dependency {
        Dependency {
            name: name.to_owned(),
            enables_std: false,
        }
    }

    #[test]
    fn manifest_is_read() {
        assert_eq!(package_name(MANIFEST).as_deref(), Some("swiotlb-xen-arm64"));
        let names: Vec<String> = runtime_dependencies(MANIFEST)
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(
            names,
            ["swiotlb-core", "xen-abi", "arrayvec", "cfg-if", "bitflags"]
        );
    }

    #[test]
    fn std_feature_is_noticed() {
        let deps = runtime_dependencies(
            "[dependencies]\nswiotlb-core = { workspace = true, features = [\"std\"] }\n",
        );
        assert_eq!(
            deps,
            [Dependency {
                name: "swiotlb-core".to_owned(),
                enables_std: true
            }]
        );
    }

    #[test]
    fn members_are_read() {
        let root =
            "[workspace]\nresolver = \"3\"\nmembers = [\n  \"crates/a\", # one\n  \"xtask\",\n]\n";
        assert_eq!(workspace_members(root), ["crates/a", "xtask"]);
    }

    fn layered() -> BTreeMap<String, Vec<Dependency>> {
        let mut packages = BTreeMap::new();
        packages.insert("swiotlb-core".to_owned(), vec![dep("bitflags")]);
        packages.insert("xen-abi".to_owned(), vec![dep("memoffset")]);
        for arch in ["swiotlb-xen-x86-pv", "swiotlb-xen-arm64"] {
            packages.insert(arch.to_owned(), vec![dep("swiotlb-core"), dep("xen-abi")]);
        }
        packages.insert(
            "swiotlb-xen".to_owned(),
            vec![
                dep("swiotlb-xen-x86-pv"),
                dep("swiotlb-xen-arm64"),
                dep("cfg-if"),
            ],
        );
        packages.insert(
            "xen-sim".to_owned(),
            vec![dep("xen-abi"), dep("swiotlb-core"), dep("anything")],
        );
        packages.insert(
            "swiotlb-xen-virtio".to_owned(),
            vec![dep("swiotlb-core"), dep("virtio-drivers")],
        );
        packages.insert("examples-x".to_owned(), vec![dep("xen-sim")]);
        packages
    }

    #[test]
    fn only_the_adapter_may_use_the_crate_it_adapts_to() {
        let mut packages = layered();
        packages
            .get_mut("swiotlb-core")
            .unwrap()
            .push(dep("virtio-drivers"));
        packages
            .get_mut("swiotlb-xen-virtio")
            .unwrap()
            .push(dep("swiotlb-xen-x86-pv"));
        let err = check_packages(&packages).unwrap_err();
        assert!(
            err.contains("swiotlb-core depends on virtio-drivers"),
            "{err}"
        );
        assert!(
            err.contains("swiotlb-xen-virtio must not depend on swiotlb-xen-x86-pv"),
            "{err}"
        );
        assert!(!err.contains("swiotlb-xen-virtio depends on"), "{err}");
    }

    #[test]
    fn the_designed_layering_passes() {
        assert_eq!(check_packages(&layered()), Ok(()));
    }

    #[test]
    fn upward_and_sideways_dependencies_fail() {
        let mut packages = layered();
        packages
            .get_mut("swiotlb-xen-arm64")
            .unwrap()
            .push(dep("swiotlb-xen-x86-pv"));
        packages
            .get_mut("swiotlb-core")
            .unwrap()
            .push(dep("xen-abi"));
        let err = check_packages(&packages).unwrap_err();
        assert!(
            err.contains("swiotlb-xen-arm64 must not depend on swiotlb-xen-x86-pv"),
            "{err}"
        );
        assert!(
            err.contains("swiotlb-core must not depend on xen-abi"),
            "{err}"
        );
    }

    #[test]
    fn no_std_crates_keep_to_their_external_list_and_off_std() {
        let mut packages = layered();
        packages.get_mut("xen-abi").unwrap().push(dep("serde"));
        packages.get_mut("swiotlb-xen").unwrap().push(Dependency {
            name: "swiotlb-core".to_owned(),
            enables_std: true,
        });
        let err = check_packages(&packages).unwrap_err();
        assert!(err.contains("xen-abi depends on serde"), "{err}");
        assert!(
            err.contains("swiotlb-xen turns on the std feature of swiotlb-core"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_library_crate_is_reported() {
        let mut packages = layered();
        packages.remove("xen-sim");
        let err = check_packages(&packages).unwrap_err();
        assert!(err.contains("xen-sim is not a workspace member"), "{err}");
    }

    #[test]
    fn the_workspace_is_layered() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check_workspace(root).unwrap();
    }
}
