//! Spot-market decisions, as pure functions: which zone to bid in, and the order of launch
//! attempts (spot instance types, then on-demand) when capacity is short.

use std::collections::BTreeMap;

/// One spot price observation.
#[derive(Debug, Clone, PartialEq)]
pub struct PricePoint {
    pub zone: String,
    /// Seconds since the epoch.
    pub time: i64,
    pub price: f64,
}

/// The zone to bid in: among zones whose most recent price is below the bid, the one whose
/// price varied least; if none is below the bid, the least volatile of all. Zones without
/// price history are ignored (the original crashed on them). `None` if no zone has history.
pub fn choose_zone(bid: f64, zones: &[String], history: &[PricePoint]) -> Option<String> {
    let mut by_zone: BTreeMap<&str, Vec<&PricePoint>> = BTreeMap::new();
    for p in history {
        if zones.iter().any(|z| z == &p.zone) {
            by_zone.entry(p.zone.as_str()).or_default().push(p);
        }
    }
    let stats: Vec<(&str, f64, f64)> = by_zone
        .iter()
        .map(|(z, ps)| {
            let n = ps.len() as f64;
            let mean = ps.iter().map(|p| p.price).sum::<f64>() / n;
            let sd = (ps.iter().map(|p| (p.price - mean).powi(2)).sum::<f64>() / n).sqrt();
            let recent = ps.iter().max_by_key(|p| p.time).map(|p| p.price).unwrap_or(f64::INFINITY);
            (*z, sd, recent)
        })
        .collect();
    let below: Vec<&(&str, f64, f64)> = stats.iter().filter(|s| s.2 < bid).collect();
    let pool: Vec<&(&str, f64, f64)> = if below.is_empty() { stats.iter().collect() } else { below };
    pool.into_iter().min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0))).map(|s| s.0.to_owned())
}

/// The mean of all observed prices, for warning about bids far above the market.
pub fn mean_price(history: &[PricePoint]) -> Option<f64> {
    (!history.is_empty()).then(|| history.iter().map(|p| p.price).sum::<f64>() / history.len() as f64)
}

/// One way of launching some of the boxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Spot { instance_type: String },
    OnDemand { instance_type: String },
}

/// The launch attempts in order: spot with each instance type, then (if allowed) on-demand
/// with the first type.
pub fn attempts(types: &[String], on_demand_fallback: bool) -> Vec<Attempt> {
    let mut v: Vec<Attempt> = types.iter().map(|t| Attempt::Spot { instance_type: t.clone() }).collect();
    if on_demand_fallback {
        if let Some(t) = types.first() {
            v.push(Attempt::OnDemand { instance_type: t.clone() });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(zone: &str, time: i64, price: f64) -> PricePoint {
        PricePoint { zone: zone.into(), time, price }
    }

    #[test]
    fn zone_choice() {
        let zones: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| (*s).to_owned()).collect();
        let h = vec![
            p("a", 1, 0.10),
            p("a", 2, 0.30), // volatile, recent 0.30
            p("b", 1, 0.20),
            p("b", 2, 0.21), // stable, recent 0.21
            p("c", 1, 0.50),
            p("c", 2, 0.50), // most stable, but above the bid
        ];
        assert_eq!(choose_zone(0.25, &zones, &h).as_deref(), Some("b"));
        // Nothing below the bid: the least volatile overall.
        assert_eq!(choose_zone(0.05, &zones, &h).as_deref(), Some("c"));
        // Zone d has no history and is never chosen; no history at all gives no zone.
        assert_eq!(choose_zone(1.0, &["d".to_owned()], &h), None);
        assert!((mean_price(&h).unwrap() - 0.3016666).abs() < 1e-6);
    }

    #[test]
    fn attempt_order() {
        let t: Vec<String> = vec!["m5.large".into(), "m5a.large".into()];
        assert_eq!(
            attempts(&t, true),
            vec![
                Attempt::Spot { instance_type: "m5.large".into() },
                Attempt::Spot { instance_type: "m5a.large".into() },
                Attempt::OnDemand { instance_type: "m5.large".into() }
            ]
        );
        assert_eq!(attempts(&t, false).len(), 2);
    }
}
