//! `GET /metrics`: counters and histograms in Prometheus' text format (version 0.0.4), kept in
//! one process-wide registry that the job, engine and webhook threads write to, plus gauges read
//! at scrape time (queue depth, loaded models, resident memory).

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Labels in a fixed order: the series' identity.
type Labels = Vec<(&'static str, String)>;

/// Every family: name, type, help, and (histograms) bucket bounds in seconds.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "imagen_jobs_total",
        "counter",
        "Generations by model and outcome: accepted, completed, failed, cancelled.",
    ),
    (
        "imagen_images_generated_total",
        "counter",
        "Images of completed generations, by model.",
    ),
    (
        "imagen_job_duration_seconds",
        "histogram",
        "From a job's start on the engine to its end, by model.",
    ),
    (
        "imagen_step_duration_seconds",
        "histogram",
        "One denoising step (all of a job's images), by model.",
    ),
    (
        "imagen_webhook_deliveries_total",
        "counter",
        "Webhook delivery attempts by outcome: delivered, retry, dead, gone.",
    ),
    (
        "imagen_queue_depth",
        "gauge",
        "Jobs waiting in the queue (the whole store's).",
    ),
    ("imagen_jobs_running", "gauge", "Jobs this process runs now."),
    (
        "imagen_models_loaded",
        "gauge",
        "Models held in memory by this process's engine.",
    ),
    (
        "imagen_model_loaded",
        "gauge",
        "1 for each model held in memory, by model.",
    ),
    (
        "imagen_model_memory_bytes",
        "gauge",
        "Resident memory each loaded model's load added (its weights as held), by model.",
    ),
    ("imagen_models_available", "gauge", "Models in the models folder."),
    (
        "imagen_process_resident_memory_bytes",
        "gauge",
        "Resident memory of this process (weights included).",
    ),
];

const JOB_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const STEP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    /// Observations at or under each bound (not cumulative yet).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

pub struct Metrics(Mutex<Registry>);

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics(Mutex::new(Registry::default())));

fn buckets(name: &str) -> &'static [f64] {
    if name == "imagen_step_duration_seconds" {
        STEP_BUCKETS
    } else {
        JOB_BUCKETS
    }
}

fn model(m: &str) -> Labels {
    vec![("model", m.to_owned())]
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, name: &'static str, labels: Labels, v: f64) {
        *self.lock().counters.entry((name, labels)).or_default() += v;
    }

    fn observe(&self, name: &'static str, labels: Labels, d: Duration) {
        let s = d.as_secs_f64();
        let mut r = self.lock();
        let h = r.histograms.entry((name, labels)).or_default();
        let bounds = buckets(name);
        h.counts.resize(bounds.len(), 0);
        if let Some(i) = bounds.iter().position(|b| s <= *b) {
            h.counts[i] += 1;
        }
        h.sum += s;
        h.count += 1;
    }

    /// A generation's outcome (`accepted` when queued).
    pub fn job(&self, model_id: &str, status: &str) {
        let mut l = model(model_id);
        l.push(("status", status.to_owned()));
        self.add("imagen_jobs_total", l, 1.0);
    }

    pub fn images(&self, model_id: &str, n: usize) {
        self.add("imagen_images_generated_total", model(model_id), n as f64);
    }

    pub fn job_time(&self, model_id: &str, d: Duration) {
        self.observe("imagen_job_duration_seconds", model(model_id), d);
    }

    pub fn step_time(&self, model_id: &str, d: Duration) {
        self.observe("imagen_step_duration_seconds", model(model_id), d);
    }

    pub fn webhook(&self, outcome: &str) {
        self.add(
            "imagen_webhook_deliveries_total",
            vec![("outcome", outcome.to_owned())],
            1.0,
        );
    }

    /// The text exposition: the registry, then `gauges` (name, labels, value) read by the caller.
    pub fn render(&self, gauges: &[(&'static str, Labels, f64)]) -> String {
        let r = self.lock();
        let mut out = String::new();
        for (family, kind, help) in FAMILIES {
            out.push_str(&format!("# HELP {family} {help}\n# TYPE {family} {kind}\n"));
            for ((name, labels), v) in r.counters.iter().filter(|((n, _), _)| n == family) {
                out.push_str(&format!("{name}{} {v}\n", fmt_labels(labels, None)));
            }
            for ((name, labels), h) in r.histograms.iter().filter(|((n, _), _)| n == family) {
                let mut cumulative = 0;
                for (bound, c) in buckets(name).iter().zip(&h.counts) {
                    cumulative += c;
                    let le = format!("{bound}");
                    out.push_str(&format!(
                        "{name}_bucket{} {cumulative}\n",
                        fmt_labels(labels, Some(&le))
                    ));
                }
                out.push_str(&format!(
                    "{name}_bucket{} {}\n",
                    fmt_labels(labels, Some("+Inf")),
                    h.count
                ));
                out.push_str(&format!("{name}_sum{} {}\n", fmt_labels(labels, None), h.sum));
                out.push_str(&format!("{name}_count{} {}\n", fmt_labels(labels, None), h.count));
            }
            for (name, labels, v) in gauges.iter().filter(|(n, _, _)| n == family) {
                out.push_str(&format!("{name}{} {v}\n", fmt_labels(labels, None)));
            }
        }
        out
    }
}

/// `{a="x",le="0.5"}`, values escaped as the format wants; empty without labels.
fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Resident memory from `/proc/self/statm` (Linux); 0 elsewhere.
pub fn resident_bytes() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()))
        .unwrap_or(0.0);
    pages * 4096.0
}

pub fn model_labels(m: &str) -> Labels {
    model(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics(Mutex::new(Registry::default()));
        m.job("tiny \"sd\"", "completed");
        m.job("tiny \"sd\"", "completed");
        m.step_time("x", Duration::from_millis(30));
        m.step_time("x", Duration::from_secs(100));
        let text = m.render(&[("imagen_queue_depth", vec![], 3.0)]);
        assert!(
            text.contains("imagen_jobs_total{model=\"tiny \\\"sd\\\"\",status=\"completed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("imagen_step_duration_seconds_bucket{model=\"x\",le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("imagen_step_duration_seconds_bucket{model=\"x\",le=\"30\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("imagen_step_duration_seconds_bucket{model=\"x\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("imagen_step_duration_seconds_count{model=\"x\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE imagen_queue_depth gauge\nimagen_queue_depth 3\n"),
            "{text}"
        );
    }
}
