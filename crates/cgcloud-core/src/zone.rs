//! Availability zones and the regions they belong to.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("'{0}' is not an availability zone name (expected something like 'us-west-2a')")]
    Malformed(String),
    #[error("zone '{zone}' is not in region '{region}'")]
    Mismatch { zone: String, region: String },
}

/// Derives the region from a zone name: `us-west-2a` → `us-west-2`,
/// `us-west-2-lax-1a` (a Local Zone) → `us-west-2`.
pub fn region_of_zone(zone: &str) -> Result<String, ZoneError> {
    let malformed = || ZoneError::Malformed(zone.to_owned());
    let parts: Vec<&str> = zone.split('-').collect();
    let is_word = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase());
    // The region is `word(-word)+-digits`; the zone adds one letter, or `-word...-digits<letter>`
    // for Local Zones.
    let i = parts.iter().position(|p| p.starts_with(|c: char| c.is_ascii_digit())).ok_or_else(malformed)?;
    if i < 2 || !parts[..i].iter().all(is_word) {
        return Err(malformed());
    }
    let digits: String = parts[i].chars().take_while(char::is_ascii_digit).collect();
    let suffix = &parts[i][digits.len()..];
    let region = format!("{}-{}", parts[..i].join("-"), digits);
    let ends_with_zone_letter = |p: &str| {
        let d: String = p.chars().take_while(char::is_ascii_digit).collect();
        !d.is_empty() && p.len() == d.len() + 1 && p.ends_with(|c: char| c.is_ascii_lowercase())
    };
    let valid = if i == parts.len() - 1 {
        suffix.len() == 1 && suffix.chars().all(|c| c.is_ascii_lowercase())
    } else {
        suffix.is_empty()
            && parts.len() >= i + 3
            && parts[i + 1..parts.len() - 1].iter().all(is_word)
            && ends_with_zone_letter(parts[parts.len() - 1])
    };
    if valid {
        Ok(region)
    } else {
        Err(malformed())
    }
}

/// Checks that `zone` lies in `region`.
pub fn check_zone_in_region(zone: &str, region: &str) -> Result<(), ZoneError> {
    let derived = region_of_zone(zone)?;
    if derived != region {
        return Err(ZoneError::Mismatch { zone: zone.to_owned(), region: region.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        assert_eq!(region_of_zone("us-west-2a").unwrap(), "us-west-2");
        assert_eq!(region_of_zone("eu-central-1b").unwrap(), "eu-central-1");
        assert_eq!(region_of_zone("us-gov-west-1a").unwrap(), "us-gov-west-1");
        assert_eq!(region_of_zone("us-west-2-lax-1a").unwrap(), "us-west-2");
        for bad in ["", "us-west-2", "us-west-2ab", "us-west", "US-west-2a", "us-west-2-"] {
            assert!(region_of_zone(bad).is_err(), "{bad}");
        }
        assert!(check_zone_in_region("us-west-2a", "us-west-2").is_ok());
        assert_eq!(
            check_zone_in_region("us-east-1a", "us-west-2"),
            Err(ZoneError::Mismatch { zone: "us-east-1a".into(), region: "us-west-2".into() })
        );
    }
}
