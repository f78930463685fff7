//! The SDK generates its bindings from its own copy of the WIT (so that the
//! crate can be published without the repository around it); the host's
//! bindings come from the repository's `wit/v0.2/`. They must be the same
//! contract. So must the frozen 0.1 SDK's (`tests/guests/v0.1/sdk`) and
//! `wit/v0.1/`. Not part of the published crate (`include` in Cargo.toml).

use std::path::Path;

#[test]
fn the_sdk_wit_is_the_repository_wit() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    same_wit(&here.join("wit"), &here.join("../../wit/v0.2"));
}

#[test]
fn the_frozen_0_1_sdk_wit_is_the_repository_0_1_wit() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    same_wit(
        &here.join("../../tests/guests/v0.1/sdk/wit"),
        &here.join("../../wit/v0.1"),
    );
}

fn same_wit(sdk: &Path, repo: &Path) {
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(sdk),
        names(repo),
        "the same WIT files in {} and {}",
        sdk.display(),
        repo.display()
    );
    for name in names(repo) {
        let theirs = std::fs::read_to_string(repo.join(&name)).unwrap();
        let ours = std::fs::read_to_string(sdk.join(&name)).unwrap();
        assert!(
            ours == theirs,
            "{}/{name} differs from {}/{name}: copy it over (an SDK publishes its own copy)",
            sdk.display(),
            repo.display()
        );
    }
}
