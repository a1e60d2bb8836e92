//! Makes one `.deb` into an image in an OCI layout and prints its digests and the time taken:
//! `cargo run -p kiln-oci --example deb_to_oci -- PACKAGE.deb LAYOUT_DIR [SOURCE_DATE_EPOCH] [amd64|arm64]`.
//! The reference name is kiln's name for the package; try `skopeo inspect oci:LAYOUT_DIR:NAME`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use kiln_oci::{
    debian_package_reference_name, image_from_deb_file, OciLayout, OciPlatform, SourceDateEpoch,
};

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let (Some(deb), Some(layout_directory)) = (arguments.first(), arguments.get(1)) else {
        eprintln!("usage: deb_to_oci PACKAGE.deb LAYOUT_DIR [SOURCE_DATE_EPOCH] [amd64|arm64]");
        return ExitCode::from(2);
    };
    let Ok(epoch) = arguments.get(2).map_or("0", String::as_str).parse::<u64>() else {
        eprintln!("SOURCE_DATE_EPOCH must be a number of seconds");
        return ExitCode::from(2);
    };
    let Some(platform) =
        OciPlatform::from_debian_architecture(arguments.get(3).map_or("amd64", String::as_str))
    else {
        eprintln!("the architecture must be amd64 or arm64");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let result = OciLayout::open_or_create(Path::new(layout_directory))
        .map_err(kiln_oci::BuildImageError::from)
        .and_then(|layout| {
            let built = image_from_deb_file(
                &layout,
                Path::new(deb),
                platform,
                SourceDateEpoch::from_seconds(epoch),
            )?;
            let reference = debian_package_reference_name(
                &built.package.package,
                &built.package.version,
                &built.package.architecture,
            );
            layout.add_manifest_ref(&reference, &built.image.manifest)?;
            Ok((built, reference))
        });
    match result {
        Ok((built, reference)) => {
            println!("reference {reference}");
            println!("manifest  {}", built.image.manifest_digest);
            println!(
                "layer     {} ({} bytes)",
                built.image.layer_digest, built.image.layer_size
            );
            println!("took      {:.3} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
