//! The SDK generates its bindings from its own copy of the WIT (so that the
//! crate can be published without the repository around it); the host's
//! bindings come from the repository's `wit/`. They must be the same
//! contract. Not part of the published crate (`include` in Cargo.toml).

use std::path::Path;

#[test]
fn the_sdk_wit_is_the_repository_wit() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("wit");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&sdk),
        names(&repo),
        "the same WIT files in guests/sdk/wit and wit/"
    );
    for name in names(&repo) {
        let theirs = std::fs::read_to_string(repo.join(&name)).unwrap();
        let ours = std::fs::read_to_string(sdk.join(&name)).unwrap();
        assert!(
            ours == theirs,
            "guests/sdk/wit/{name} differs from wit/{name}: copy wit/{name} into guests/sdk/wit/ (the SDK publishes its own copy)"
        );
    }
}
