//! The dashboard's updates as deltas: what one open page was last sent,
//! so the next update carries each service's figures (small) but only the
//! instance rows that changed, the keys of those gone, and the events only
//! when there are new ones. At N = 1,000 (mostly Eureka registrations
//! whose rows do not change from one second to the next) a whole update
//! was ~400 KB a second per open page.

use std::collections::HashMap;

use serde_json::Value;

/// What one page was sent.
#[derive(Default)]
pub struct Shown {
    /// Per service, each instance row as sent, by its key.
    rows: HashMap<String, HashMap<String, String>>,
    /// The newest event sent.
    last_event: Option<String>,
    /// Whether anything was sent yet.
    started: bool,
}

/// An instance row's key: its member id, or `gone@{addr}` for figures of
/// an instance this gateway no longer sees.
fn key(row: &Value) -> String {
    match row.get("member").and_then(Value::as_str) {
        Some(member) => member.to_string(),
        None => format!(
            "gone@{}",
            row.get("addr").and_then(Value::as_str).unwrap_or_default()
        ),
    }
}

impl Shown {
    /// `update` (a whole one: `stats.services.*.instances`, `events`) made
    /// into what the page lacks, which is then noted as sent. The first is
    /// marked `full` (the page starts over): every row, every event.
    ///
    /// Per service: the figures, `rows` (new or changed instances, each
    /// with its `key`) and `gone` (keys); `stats.services_gone` names the
    /// services that left; `events` is left out when nothing new happened.
    pub fn delta(&mut self, mut update: Value) -> Value {
        let full = !self.started;
        self.started = true;
        update["full"] = full.into();
        let mut left: Vec<String> = self.rows.keys().cloned().collect();
        if let Some(services) = update
            .get_mut("stats")
            .and_then(|s| s.get_mut("services"))
            .and_then(Value::as_object_mut)
        {
            for (name, service) in services.iter_mut() {
                left.retain(|n| n != name);
                let shown = self.rows.entry(name.clone()).or_default();
                let instances = match service.get_mut("instances").map(Value::take) {
                    Some(Value::Array(list)) => list,
                    _ => Vec::new(),
                };
                let mut rows = Vec::new();
                let mut seen: HashMap<String, String> = HashMap::with_capacity(instances.len());
                for mut row in instances {
                    let key = key(&row);
                    let text = row.to_string();
                    if shown.get(&key) != Some(&text) {
                        row["key"] = key.clone().into();
                        rows.push(row);
                    }
                    seen.insert(key, text);
                }
                let gone: Vec<Value> = shown
                    .keys()
                    .filter(|k| !seen.contains_key(*k))
                    .map(|k| Value::String(k.clone()))
                    .collect();
                *shown = seen;
                if let Some(doc) = service.as_object_mut() {
                    doc.remove("instances");
                    doc.insert("rows".into(), Value::Array(rows));
                    doc.insert("gone".into(), Value::Array(gone));
                }
            }
        }
        for name in &left {
            self.rows.remove(name);
        }
        if let Some(stats) = update.get_mut("stats").and_then(Value::as_object_mut) {
            let gone = left.into_iter().map(Value::String).collect();
            stats.insert("services_gone".into(), Value::Array(gone));
        }
        // Events: only when the newest one is not what was sent last.
        let newest = update
            .get("events")
            .and_then(Value::as_array)
            .and_then(|e| e.last())
            .map(Value::to_string);
        if !full && newest == self.last_event {
            if let Some(doc) = update.as_object_mut() {
                doc.remove("events");
            }
        }
        self.last_event = newest;
        update
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn update(instances: Value, events: Value) -> Value {
        json!({
            "at_ms": 1,
            "stats": {"gateways": 1, "services": {"story": {"rps": 1.0, "instances": instances}}},
            "events": events,
        })
    }

    #[test]
    fn a_page_gets_every_row_once_then_only_what_changed() {
        let mut shown = Shown::default();
        let a = json!({"member": "story@a#1", "addr": "a", "rps": 1.0});
        let b = json!({"member": "story@b#1", "addr": "b", "rps": 0.0});
        let e1 = json!([{"at_ms": 5, "id": "story@a#1"}]);
        let first = shown.delta(update(json!([a, b]), e1.clone()));
        assert_eq!(first["full"], true);
        let story = &first["stats"]["services"]["story"];
        assert_eq!(story["rows"].as_array().unwrap().len(), 2);
        assert_eq!(story["rows"][0]["key"], "story@a#1");
        assert!(story.get("instances").is_none());
        assert_eq!(first["events"], e1);

        // Nothing changed: the figures, no rows, no events.
        let same = shown.delta(update(json!([a, b]), e1.clone()));
        assert_eq!(same["full"], false);
        assert_eq!(same["stats"]["services"]["story"]["rps"], 1.0);
        assert_eq!(same["stats"]["services"]["story"]["rows"], json!([]));
        assert_eq!(same["stats"]["services"]["story"]["gone"], json!([]));
        assert!(same.get("events").is_none());

        // a's figures changed, b left (its figures stay a while under
        // gone@b), and a new event: those alone.
        let a2 = json!({"member": "story@a#1", "addr": "a", "rps": 2.0});
        let b_gone = json!({"addr": "b", "rps": 0.0, "health": "gone"});
        let e2 = json!([{"at_ms": 5, "id": "story@a#1"}, {"at_ms": 6, "id": "story@b#1"}]);
        let next = shown.delta(update(json!([a2, b_gone]), e2.clone()));
        let story = &next["stats"]["services"]["story"];
        let keys: Vec<&str> = story["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["story@a#1", "gone@b"]);
        assert_eq!(story["gone"], json!(["story@b#1"]));
        assert_eq!(next["events"], e2);

        // The service left: named once.
        let empty = json!({"at_ms": 2, "stats": {"services": {}}, "events": e2});
        let left = shown.delta(empty.clone());
        assert_eq!(left["stats"]["services_gone"], json!(["story"]));
        assert_eq!(shown.delta(empty)["stats"]["services_gone"], json!([]));
    }
}
