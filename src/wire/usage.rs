//! Token usage: what upstream DIAL deployments report (`usage` on their last
//! chunk or on a non-streaming answer) and what the coordinator reports for the
//! whole request: the sum as `usage`, and one `statistics.usage_per_model`
//! entry per deployment it called, as aidial-sdk writes them.

use serde::{Deserialize, Deserializer, Serialize};

/// Token counts of one call or of a sum of calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum, as the upstream reported it.
    pub total_tokens: u64,
}

impl Usage {
    /// Usage with the total computed.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }

    fn add(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
    }
}

/// Reads an upstream `usage` object leniently: missing or non-numeric counts
/// are 0, and a missing total is the sum of the other two.
impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Usage, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            prompt_tokens: Option<serde_json::Value>,
            #[serde(default)]
            completion_tokens: Option<serde_json::Value>,
            #[serde(default)]
            total_tokens: Option<serde_json::Value>,
        }
        let count = |v: &Option<serde_json::Value>| v.as_ref().and_then(serde_json::Value::as_u64);
        let wire = Wire::deserialize(d)?;
        let mut usage = Usage::new(
            count(&wire.prompt_tokens).unwrap_or(0),
            count(&wire.completion_tokens).unwrap_or(0),
        );
        if let Some(total) = count(&wire.total_tokens) {
            usage.total_tokens = total;
        }
        Ok(usage)
    }
}

/// The usage of one response: per deployment, in the order first called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    per_model: Vec<(String, Usage)>,
}

/// One entry of `statistics.usage_per_model`.
#[derive(Debug, Serialize)]
struct ModelUsage<'a> {
    index: usize,
    model: &'a str,
    #[serde(flatten)]
    usage: Usage,
}

/// `statistics` of the last chunk.
#[derive(Debug, Serialize)]
pub struct Statistics<'a> {
    usage_per_model: Vec<ModelUsage<'a>>,
}

impl UsageReport {
    /// Adds what one call to `model` reported.
    pub fn add(&mut self, model: &str, usage: Usage) {
        match self.per_model.iter_mut().find(|(m, _)| m == model) {
            Some((_, sum)) => sum.add(usage),
            None => self.per_model.push((model.to_owned(), usage)),
        }
    }

    /// Whether nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.per_model.is_empty()
    }

    /// The sum over every deployment.
    pub fn total(&self) -> Usage {
        let mut total = Usage::default();
        for (_, u) in &self.per_model {
            total.add(*u);
        }
        total
    }

    /// The `statistics` object: one entry per deployment.
    pub fn statistics(&self) -> Statistics<'_> {
        Statistics {
            usage_per_model: self
                .per_model
                .iter()
                .enumerate()
                .map(|(index, (model, usage))| ModelUsage {
                    index,
                    model,
                    usage: *usage,
                })
                .collect(),
        }
    }

    /// The usage of one deployment, if it reported any.
    pub fn of(&self, model: &str) -> Option<Usage> {
        self.per_model
            .iter()
            .find(|(m, _)| m == model)
            .map(|(_, u)| *u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upstream_usage_is_read_leniently() {
        let u: Usage = serde_json::from_value(
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
        )
        .unwrap();
        assert_eq!(u, Usage::new(3, 4));
        let u: Usage = serde_json::from_value(json!({"prompt_tokens": 3})).unwrap();
        assert_eq!(u, Usage::new(3, 0));
        let u: Usage =
            serde_json::from_value(json!({"prompt_tokens": "x", "completion_tokens": 2})).unwrap();
        assert_eq!(u, Usage::new(0, 2));
    }

    #[test]
    fn report_sums_per_model_in_call_order() {
        let mut r = UsageReport::default();
        assert!(r.is_empty());
        r.add("b", Usage::new(1, 1));
        r.add("a", Usage::new(2, 2));
        r.add("b", Usage::new(3, 0));
        assert_eq!(r.total(), Usage::new(6, 3));
        assert_eq!(
            serde_json::to_value(r.statistics()).unwrap(),
            json!({"usage_per_model": [
                {"index": 0, "model": "b", "prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
                {"index": 1, "model": "a", "prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
            ]})
        );
        assert_eq!(r.of("a"), Some(Usage::new(2, 2)));
    }
}
