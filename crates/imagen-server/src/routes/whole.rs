//! Integer fields that take `4` and `4.0` alike: JSON Schema counts a number with a zero
//! fraction as an integer, and so do JavaScript and many generated clients (`serde` alone
//! refuses `4.0` for an integer type).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The value as a whole number, if it is one (`2`, `2.0`; not `2.5`, `-1`, `"2"`).
pub fn whole(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

fn expected<E: serde::de::Error>(v: &Value) -> E {
    E::custom(format!("invalid value {v}, expected a non-negative integer"))
}

pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => whole(&v).map(Some).ok_or_else(|| expected(&v)),
    }
}

pub fn opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    opt_u64(d)?
        .map(|n| usize::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large"))))
        .transpose()
}

pub fn opt_vec_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<usize>>, D::Error> {
    match Option::<Vec<Value>>::deserialize(d)? {
        None => Ok(None),
        Some(items) => items
            .iter()
            .map(|v| {
                whole(v)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| expected(v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct B {
        #[serde(default, deserialize_with = "opt_usize")]
        n: Option<usize>,
        #[serde(default, deserialize_with = "opt_u64")]
        seed: Option<u64>,
        #[serde(default, deserialize_with = "opt_vec_usize")]
        layers: Option<Vec<usize>>,
    }

    #[test]
    fn integral_floats_are_integers() {
        let b: B = serde_json::from_str(r#"{"n": 4.0, "seed": 18446744073709551615, "layers": [7, 8.0]}"#).expect("ok");
        assert_eq!((b.n, b.seed, b.layers), (Some(4), Some(u64::MAX), Some(vec![7, 8])));
        let b: B = serde_json::from_str("{}").expect("ok");
        assert_eq!((b.n, b.seed), (None, None));
        for bad in [
            r#"{"n": 2.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": "2"}"#,
            r#"{"seed": 1e30}"#,
            r#"{"layers": [1.5]}"#,
        ] {
            assert!(serde_json::from_str::<B>(bad).is_err(), "{bad}");
        }
    }
}
