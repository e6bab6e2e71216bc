//! Embeds the browser bundle (`oxeye_ui.js`, `oxeye_ui_bg.wasm`, written by `scripts/build-ui`)
//! into the server build, so the `oxeye` binary serves the whole UI by itself.
//!
//! The bundle is read from `$OXEYE_UI_PKG_DIR`, or `<target dir>/oxeye-ui-pkg`. Without it the
//! server still renders every page (no hydration) and says so in its log.

use std::io::Write;
use std::path::{Path, PathBuf};

fn target_dir(out_dir: &Path) -> Option<PathBuf> {
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<crate>-<hash>/out; cargo marks <target>
    // with CACHEDIR.TAG.
    out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn main() {
    println!("cargo:rerun-if-env-changed=OXEYE_UI_PKG_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    if std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32") {
        // The browser build is the bundle; it embeds nothing.
        std::fs::write(
            out_dir.join("bundle.rs"),
            "pub const BUNDLE: Option<Bundle> = None;\n",
        )
        .expect("write to OUT_DIR");
        return;
    }
    let pkg = match std::env::var_os("OXEYE_UI_PKG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir(&out_dir)
            .unwrap_or_else(|| out_dir.clone())
            .join("oxeye-ui-pkg"),
    };
    // Watch the directory (cargo scans it for changes); create it so the watch is stable.
    let _ = std::fs::create_dir_all(&pkg);
    println!("cargo:rerun-if-changed={}", pkg.display());

    let js = std::fs::read(pkg.join("oxeye_ui.js")).ok();
    let wasm = std::fs::read(pkg.join("oxeye_ui_bg.wasm")).ok();
    let mut code = String::new();
    match (js, wasm) {
        (Some(js), Some(wasm)) if !js.is_empty() && !wasm.is_empty() => {
            let mut files = Vec::new();
            for (name, bytes) in [("oxeye_ui.js", js), ("oxeye_ui_bg.wasm", wasm)] {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                gz.write_all(&bytes).expect("gzip in memory");
                let gz = gz.finish().expect("gzip in memory");
                let raw_path = out_dir.join(name);
                let gz_path = out_dir.join(format!("{name}.gz"));
                std::fs::write(&raw_path, &bytes).expect("write to OUT_DIR");
                std::fs::write(&gz_path, &gz).expect("write to OUT_DIR");
                files.push(format!(
                    "Asset {{ raw: include_bytes!({:?}), gzip: include_bytes!({:?}), etag: \"\\\"{:016x}\\\"\" }}",
                    raw_path.display().to_string(),
                    gz_path.display().to_string(),
                    fnv(&bytes)
                ));
            }
            code.push_str(&format!(
                "pub const BUNDLE: Option<Bundle> = Some(Bundle {{ js: {}, wasm: {} }});\n",
                files[0], files[1]
            ));
        }
        _ => {
            println!(
                "cargo:warning=oxeye-ui: no browser bundle in {} (run scripts/build-ui); pages will render without hydration",
                pkg.display()
            );
            code.push_str("pub const BUNDLE: Option<Bundle> = None;\n");
        }
    }
    std::fs::write(out_dir.join("bundle.rs"), code).expect("write to OUT_DIR");
}
