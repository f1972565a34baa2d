//! Hostile clients for the simulator: what a client speaking the protocol correctly can do to
//! the model, to measure the robust aggregators against (`sim --attack MODE --attackers N`).
//! Nothing here runs in a browser.
//!
//! The attacker trains honestly (so its timing, sizes and privacy spending look like everyone
//! else's), then replaces its update, or trains on flipped labels.

use std::str::FromStr;

use learning::Dataset;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// What a hostile client does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// Sends −update: pushes the model away from where the honest clients take it.
    SignFlip,
    /// Sends K·update (model replacement when K is about the number of clients).
    Scale(f32),
    /// Sends a random direction of this L2 norm.
    Random(f32),
    /// Trains on labels y → 9 − y (data poisoning: the update looks like an honest one).
    LabelFlip,
    /// Sends zeros (a free rider that drags the average towards no progress).
    Zero,
}

impl FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number = |v: &str, what: &str| -> Result<f32, String> {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("attack {s:?}: {what} {v:?} is not a finite number"))
        };
        match s.split_once(':') {
            None if s == "sign-flip" => Ok(Self::SignFlip),
            None if s == "label-flip" => Ok(Self::LabelFlip),
            None if s == "zero" => Ok(Self::Zero),
            Some(("scale", k)) => Ok(Self::Scale(number(k, "factor")?)),
            Some(("random", n)) => {
                let n = number(n, "norm")?;
                if n > 0.0 {
                    Ok(Self::Random(n))
                } else {
                    Err(format!("attack {s:?}: the norm must be > 0"))
                }
            }
            _ => Err(format!(
                "attack {s:?}: expected sign-flip, scale:K, random:NORM, label-flip or zero"
            )),
        }
    }
}

impl Attack {
    /// The data to train on instead of `data` (label flipping), or `None` to train honestly.
    pub fn poison_data(&self, data: &Dataset) -> Option<Dataset> {
        (*self == Self::LabelFlip).then(|| Dataset {
            images: data.images.clone(),
            labels: data.labels.iter().map(|&y| 9u8.saturating_sub(y)).collect(),
        })
    }

    /// Replaces an honestly trained `update` by the hostile one (`seed` makes `random` repeatable).
    pub fn poison_update(&self, update: &mut [f32], seed: u64) {
        match *self {
            Self::SignFlip => update.iter_mut().for_each(|u| *u = -*u),
            Self::Scale(k) => update.iter_mut().for_each(|u| *u *= k),
            Self::Zero => update.fill(0.0),
            Self::LabelFlip => {}
            Self::Random(norm) => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                update
                    .iter_mut()
                    .for_each(|u| *u = StandardNormal.sample(&mut rng));
                let len = update
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
                    .sqrt();
                let scale = (norm as f64 / len.max(f64::MIN_POSITIVE)) as f32;
                update.iter_mut().for_each(|u| *u *= scale);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_bad_ones_are_named() {
        assert_eq!("sign-flip".parse(), Ok(Attack::SignFlip));
        assert_eq!("scale:10".parse(), Ok(Attack::Scale(10.0)));
        assert_eq!("random:1000".parse(), Ok(Attack::Random(1000.0)));
        assert_eq!("label-flip".parse(), Ok(Attack::LabelFlip));
        assert_eq!("zero".parse(), Ok(Attack::Zero));
        assert!("random:-1".parse::<Attack>().unwrap_err().contains("> 0"));
        assert!(
            "scale:inf"
                .parse::<Attack>()
                .unwrap_err()
                .contains("finite")
        );
        assert!(
            "flip"
                .parse::<Attack>()
                .unwrap_err()
                .contains("expected sign-flip")
        );
    }

    #[test]
    fn each_mode_does_what_it_says() {
        let honest = vec![1.0f32, -2.0, 2.0];
        let run = |a: Attack| {
            let mut u = honest.clone();
            a.poison_update(&mut u, 7);
            u
        };
        assert_eq!(run(Attack::SignFlip), vec![-1.0, 2.0, -2.0]);
        assert_eq!(run(Attack::Scale(3.0)), vec![3.0, -6.0, 6.0]);
        assert_eq!(run(Attack::Zero), vec![0.0; 3]);
        assert_eq!(run(Attack::LabelFlip), honest);
        let r = run(Attack::Random(1000.0));
        let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1000.0).abs() < 0.1, "{norm}");
        assert_eq!(r, run(Attack::Random(1000.0)));
        let data = Dataset {
            images: vec![0; 3 * 784],
            labels: vec![0, 3, 9],
        };
        assert_eq!(
            Attack::LabelFlip.poison_data(&data).unwrap().labels,
            vec![9, 6, 0]
        );
        assert!(Attack::SignFlip.poison_data(&data).is_none());
    }
}
