//! Writes the CRD YAML into `crds/` and `helm/fjord/crds/` (run from anywhere).

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    for dir in [root.join("crds"), root.join("helm/fjord/crds")] {
        std::fs::create_dir_all(&dir)?;
        for (file, yaml) in fjord_crds::crd_yaml() {
            std::fs::write(dir.join(file), yaml)?;
            println!("wrote {}", dir.join(file).display());
        }
    }
    Ok(())
}
