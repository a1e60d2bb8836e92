//! `KBUILD_BUILD_TIMESTAMP` from an epoch, without the clock or the host's locale.

/// Formats `epoch` (seconds since 1970, UTC) the way `LC_ALL=C TZ=UTC date` prints it,
/// e.g. `Tue Nov 14 22:13:20 UTC 2023`: the kernel prints the string in `uname -v` and
/// parses it back with `date -d` when it stamps built-in archives.
pub fn kbuild_timestamp(epoch: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = epoch / 86_400;
    let seconds_of_day = epoch % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = WEEKDAYS[usize::try_from(days % 7).unwrap_or(0)];
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!(
        "{weekday} {month_name} {day:>2} {:02}:{:02}:{:02} UTC {year}",
        seconds_of_day / 3600,
        seconds_of_day % 3600 / 60,
        seconds_of_day % 60
    )
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::kbuild_timestamp;

    fn check(epoch: u64, expected: &str) {
        assert_eq!(kbuild_timestamp(epoch), expected);
    }

    #[test]
    fn formats_like_c_locale_date() {
        check(0, "Thu Jan  1 00:00:00 UTC 1970");
        check(1_700_000_000, "Tue Nov 14 22:13:20 UTC 2023");
        check(951_782_400, "Tue Feb 29 00:00:00 UTC 2000");
        check(4_294_967_295, "Sun Feb  7 06:28:15 UTC 2106");
    }
}
