//! The two platforms kiln builds images for, and the build timestamp.

use std::fmt;

/// The platform an image is built for. kiln boots Linux on x86_64 and aarch64 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OciPlatform {
    /// `linux/amd64` (Debian `amd64`, kernel `x86_64`).
    LinuxAmd64,
    /// `linux/arm64/v8` (Debian `arm64`, kernel `aarch64`).
    LinuxArm64,
}

impl OciPlatform {
    /// The OCI `architecture` value (Go's GOARCH): `amd64` or `arm64`.
    pub const fn oci_architecture(self) -> &'static str {
        match self {
            Self::LinuxAmd64 => "amd64",
            Self::LinuxArm64 => "arm64",
        }
    }

    /// The OCI `variant`: `v8` for arm64 (what registries and `docker` expect), none for amd64.
    pub const fn oci_variant(self) -> Option<&'static str> {
        match self {
            Self::LinuxAmd64 => None,
            Self::LinuxArm64 => Some("v8"),
        }
    }

    /// The OCI `os` value; always `linux`.
    pub const fn oci_os(self) -> &'static str {
        "linux"
    }

    /// The Debian architecture name of packages built for this platform.
    pub const fn debian_architecture(self) -> &'static str {
        self.oci_architecture()
    }

    /// The platform whose packages carry Debian architecture `debian_architecture`
    /// (`amd64` or `arm64`); `None` for any other, including `all`.
    pub fn from_debian_architecture(debian_architecture: &str) -> Option<Self> {
        match debian_architecture {
            "amd64" => Some(Self::LinuxAmd64),
            "arm64" => Some(Self::LinuxArm64),
            _ => None,
        }
    }
}

impl fmt::Display for OciPlatform {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.oci_os(), self.oci_architecture())?;
        if let Some(variant) = self.oci_variant() {
            write!(formatter, "/{variant}")?;
        }
        Ok(())
    }
}

/// The one timestamp an image may contain: `SOURCE_DATE_EPOCH`, seconds since 1970-01-01 UTC.
/// Every tar entry's mtime and the config's `created` come from it; kiln never reads the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceDateEpoch {
    seconds_since_unix_epoch: u64,
}

impl SourceDateEpoch {
    /// The epoch `seconds_since_unix_epoch` seconds after 1970-01-01T00:00:00Z.
    pub const fn from_seconds(seconds_since_unix_epoch: u64) -> Self {
        Self {
            seconds_since_unix_epoch,
        }
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub const fn seconds(self) -> u64 {
        self.seconds_since_unix_epoch
    }

    /// RFC 3339 in UTC with a `Z` suffix and no fraction, e.g. `2023-06-10T12:00:00Z`.
    /// Computed arithmetically (proleptic Gregorian calendar), so TZ and locale cannot reach it.
    pub fn to_rfc3339(self) -> String {
        let days_since_unix_epoch = self.seconds_since_unix_epoch / 86_400;
        let seconds_of_day = self.seconds_since_unix_epoch % 86_400;
        let (year, month, day) = civil_date_from_days_since_unix_epoch(days_since_unix_epoch);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            seconds_of_day / 3600,
            seconds_of_day % 3600 / 60,
            seconds_of_day % 60
        )
    }
}

/// Howard Hinnant's `civil_from_days`, restricted to days on or after 1970-01-01 so that every
/// intermediate value is non-negative.
fn civil_date_from_days_since_unix_epoch(days_since_unix_epoch: u64) -> (u64, u64, u64) {
    let days_since_0000_03_01 = days_since_unix_epoch + 719_468;
    let era = days_since_0000_03_01 / 146_097;
    let day_of_era = days_since_0000_03_01 - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        let check = |seconds: u64, expected: &str| {
            assert_eq!(
                SourceDateEpoch::from_seconds(seconds).to_rfc3339(),
                expected,
                "{seconds}"
            );
        };
        check(0, "1970-01-01T00:00:00Z");
        check(951_782_400, "2000-02-29T00:00:00Z");
        check(951_868_799, "2000-02-29T23:59:59Z");
        check(1_686_398_400, "2023-06-10T12:00:00Z");
        check(4_102_444_800, "2100-01-01T00:00:00Z");
        check(4_107_542_399, "2100-02-28T23:59:59Z");
        check(4_107_542_400, "2100-03-01T00:00:00Z");
    }

    #[test]
    fn platform_names_follow_the_oci_image_index_spec() {
        assert_eq!(OciPlatform::LinuxAmd64.to_string(), "linux/amd64");
        assert_eq!(OciPlatform::LinuxArm64.to_string(), "linux/arm64/v8");
        assert_eq!(
            OciPlatform::from_debian_architecture("arm64"),
            Some(OciPlatform::LinuxArm64)
        );
        assert_eq!(OciPlatform::from_debian_architecture("all"), None);
    }
}
