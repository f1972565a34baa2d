//! The data owner's privacy ledger as it is stored and moved: one entry per *dataset*, named by a
//! fingerprint of its contents, so that the same records keep the same ledger whichever tab,
//! run, shard assignment or client key trains on them.
//!
//! The browser keeps each entry in `localStorage` under [`storage_key`], sealed with a SHA-256
//! checksum ([`seal`] / [`open`]). An entry that does not open (damaged, edited by hand, written
//! by another version) is [`LedgerSlot::Unreadable`]: training on that dataset is refused until
//! the user resets it knowingly — never treated as "nothing spent".
//!
//! The checksum detects corruption and edits that did not recompute it; it is no defence against
//! code running in the page's origin, which could rewrite the entry and its checksum (the README
//! says so beside the ε cap).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Storage key prefix of ledger entries (`localStorage`).
pub const STORAGE_PREFIX: &str = "fl-dp.ledger.";
/// Version of the stored form; another version is unreadable, not zero.
pub const LEDGER_VERSION: u32 = 1;
/// Most distinct mechanisms a ledger holds (equal ones are merged, so an honest federation adds
/// one per shard size and σ). ≈ 500 KB stored at the most, well inside a browser's
/// `localStorage` quota; the client refuses a round that would add one more, and an entry
/// holding more does not open.
pub const MAX_HISTORY: usize = 10_000;

/// IDX header sizes (magic + dimensions) of MNIST image and label files.
const IMAGES_HEADER: usize = 16;
const LABELS_HEADER: usize = 8;
const IMAGE_BYTES: usize = 28 * 28;

/// A dataset's identity, hex: the SHA-256 of the *sorted* SHA-256s of its records (image and
/// label), so the same records give the same fingerprint in every tab and every run, in any
/// order — a server cannot reset a shard's ledger by shuffling it. Files that are not a
/// well-formed pair of IDX files (which the client refuses to train on anyway) are hashed as
/// bytes.
pub fn fingerprint(images: &[u8], labels: &[u8]) -> String {
    let Some(records) = idx_records(images, labels) else {
        let mut h = Sha256::new();
        for part in [images, labels] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        return hex(&h.finalize());
    };
    let mut hashes: Vec<[u8; 32]> = records
        .map(|(image, label)| {
            let mut h = Sha256::new();
            h.update(image);
            h.update([label]);
            h.finalize().into()
        })
        .collect();
    hashes.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"fl-dp records v1");
    for r in &hashes {
        h.update(r);
    }
    hex(&h.finalize())
}

/// The `(image, label)` records of an IDX pair whose sizes match their headers exactly.
fn idx_records<'a>(
    images: &'a [u8],
    labels: &'a [u8],
) -> Option<impl Iterator<Item = (&'a [u8], u8)>> {
    let count = |b: &[u8]| Some(u32::from_be_bytes(b.get(4..8)?.try_into().ok()?) as usize);
    let n = count(images)?;
    let exact = count(labels)? == n
        && images.len() == IMAGES_HEADER + n.checked_mul(IMAGE_BYTES)?
        && labels.len() == LABELS_HEADER + n;
    exact.then(|| {
        images[IMAGES_HEADER..]
            .chunks_exact(IMAGE_BYTES)
            .zip(labels[LABELS_HEADER..].iter().copied())
    })
}

/// The `localStorage` key of a dataset's ledger.
pub fn storage_key(fingerprint: &str) -> String {
    format!("{STORAGE_PREFIX}{fingerprint}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything released about one dataset's records, as mechanisms (not as ε: ε is recomputed
/// from them at whatever δ the owner states it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetLedger {
    pub fingerprint: String,
    /// `(sample_rate, noise_multiplier, steps)` of every Gaussian mechanism run on these
    /// records (DP-SGD steps, DP evaluations with sample rate 1), in order.
    pub history: Vec<(f64, f64, u64)>,
    /// Rounds trained on these records *without* DP: their ε is unbounded from then on.
    #[serde(default)]
    pub unprotected_rounds: u64,
    /// Distributed-DP steps (Skellam noise shared among a round's clients), one entry per
    /// distinct mechanism. Absent from ledgers that hold none, so older entries read as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skellam: Vec<SkellamEntry>,
}

/// One distributed-DP mechanism: a Poisson-subsampled step whose summed noise is Skellam of
/// standard deviation z·S integer units, S units per clipping norm, over `dim` coordinates
/// rounded with conditional rounding β, the noise split among `contributors` clients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SkellamMechanism {
    pub sample_rate: f64,
    /// z: the summed noise's standard deviation over the clipping norm.
    pub noise_multiplier: f64,
    pub scale: f64,
    pub dim: u64,
    pub beta: f64,
    /// t: the round's noise is whole when t clients' shares are in it; this client's own share
    /// alone has noise multiplier z/√t (the worst case, every other client colluding).
    pub contributors: u32,
}

impl SkellamMechanism {
    /// Every field in range (a stored ledger is checked when opened).
    pub fn is_valid(&self) -> bool {
        self.sample_rate > 0.0
            && self.sample_rate <= 1.0
            && self.noise_multiplier > 0.0
            && self.noise_multiplier.is_finite()
            && self.scale > 0.0
            && self.scale.is_finite()
            && self.dim > 0
            && (0.0..1.0).contains(&self.beta)
            && self.contributors > 0
    }
}

/// `steps` of one [`SkellamMechanism`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SkellamEntry {
    pub mechanism: SkellamMechanism,
    pub steps: u64,
}

/// Adds `steps` of a Skellam mechanism to a list, merging equal mechanisms as [`compose`].
pub fn compose_skellam(entries: &mut Vec<SkellamEntry>, mechanism: SkellamMechanism, steps: u64) {
    match entries.iter_mut().find(|e| e.mechanism == mechanism) {
        Some(e) => e.steps = e.steps.saturating_add(steps),
        None => entries.push(SkellamEntry { mechanism, steps }),
    }
}

/// Adds `steps` of the mechanism (q, σ) to a history: one entry per distinct mechanism, so
/// the history does not grow with alternating or repeated mechanisms (RDP composition does not
/// depend on order). The one rule for the client's ledger, the server's and the stored form.
pub fn compose(history: &mut Vec<(f64, f64, u64)>, (q, sigma, steps): (f64, f64, u64)) {
    match mechanism_index(history, q, sigma) {
        Some(i) => history[i].2 = history[i].2.saturating_add(steps),
        None => history.push((q, sigma, steps)),
    }
}

/// Where a history holds the mechanism (q, σ), if it does.
pub fn mechanism_index(history: &[(f64, f64, u64)], q: f64, sigma: f64) -> Option<usize> {
    history
        .iter()
        .position(|&(hq, hs, _)| hq == q && hs == sigma)
}

impl DatasetLedger {
    /// An empty ledger of dataset `fingerprint`.
    pub fn new(fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.into(),
            ..Self::default()
        }
    }

    /// Composes `other` into this ledger: steps summed per (q, σ) (RDP composition does not
    /// depend on order). Two tabs' spending on the same records adds up this way.
    pub fn add(&mut self, other: &DatasetLedger) {
        for &mechanism in &other.history {
            compose(&mut self.history, mechanism);
        }
        for e in &other.skellam {
            compose_skellam(&mut self.skellam, e.mechanism, e.steps);
        }
        self.unprotected_rounds = self
            .unprotected_rounds
            .saturating_add(other.unprotected_rounds);
    }

    /// What this ledger holds beyond `base` (the spending since `base` was read).
    pub fn since(&self, base: &DatasetLedger) -> DatasetLedger {
        let history = self
            .history
            .iter()
            .filter_map(|&(q, sigma, steps)| {
                let before =
                    mechanism_index(&base.history, q, sigma).map_or(0, |i| base.history[i].2);
                let more = steps.saturating_sub(before);
                (more > 0).then_some((q, sigma, more))
            })
            .collect();
        let skellam = self
            .skellam
            .iter()
            .filter_map(|e| {
                let before = base
                    .skellam
                    .iter()
                    .find(|b| b.mechanism == e.mechanism)
                    .map_or(0, |b| b.steps);
                let more = e.steps.saturating_sub(before);
                (more > 0).then_some(SkellamEntry { steps: more, ..*e })
            })
            .collect();
        DatasetLedger {
            fingerprint: self.fingerprint.clone(),
            history,
            unprotected_rounds: self
                .unprotected_rounds
                .saturating_sub(base.unprotected_rounds),
            skellam,
        }
    }
}

/// A stored entry: the format version, the ledger as JSON text, and the SHA-256 of exactly that
/// text. (A checksum recomputed from re-serialised numbers would depend on float parsing and
/// printing round-tripping to the bit; the text is compared as it was written.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sealed {
    version: u32,
    ledger: String,
    checksum: String,
}

fn checksum(version: u32, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(version.to_le_bytes());
    h.update(body.as_bytes());
    hex(&h.finalize())
}

/// The stored text of a ledger.
pub fn seal(ledger: &DatasetLedger) -> Result<String, serde_json::Error> {
    let body = serde_json::to_string(ledger)?;
    serde_json::to_string(&Sealed {
        version: LEDGER_VERSION,
        checksum: checksum(LEDGER_VERSION, &body),
        ledger: body,
    })
}

/// Why a stored ledger cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    #[error("it does not decode ({0})")]
    Decode(String),
    #[error("it is version {0}, expected version {LEDGER_VERSION}")]
    Version(u32),
    #[error("its checksum does not match its contents: it was changed outside this page")]
    Checksum,
    #[error("it belongs to dataset {found}, expected {expected}")]
    Fingerprint { expected: String, found: String },
    #[error("{0}")]
    Value(String),
}

/// Opens the stored text of the ledger of `fingerprint`, checking everything a damaged or
/// edited entry could get wrong.
pub fn open(fingerprint: &str, text: &str) -> Result<DatasetLedger, LedgerError> {
    let sealed: Sealed =
        serde_json::from_str(text).map_err(|e| LedgerError::Decode(e.to_string()))?;
    if sealed.version != LEDGER_VERSION {
        return Err(LedgerError::Version(sealed.version));
    }
    if checksum(sealed.version, &sealed.ledger) != sealed.checksum {
        return Err(LedgerError::Checksum);
    }
    let ledger: DatasetLedger =
        serde_json::from_str(&sealed.ledger).map_err(|e| LedgerError::Decode(e.to_string()))?;
    if ledger.fingerprint != fingerprint {
        return Err(LedgerError::Fingerprint {
            expected: fingerprint.into(),
            found: ledger.fingerprint,
        });
    }
    let entries = ledger.history.len() + ledger.skellam.len();
    if entries > MAX_HISTORY {
        return Err(LedgerError::Value(format!(
            "its history has {entries} entries: expected at most {MAX_HISTORY}"
        )));
    }
    if let Some(bad) = ledger
        .skellam
        .iter()
        .find(|e| !e.mechanism.is_valid() || e.steps == 0)
    {
        return Err(LedgerError::Value(format!(
            "it holds the distributed mechanism {bad:?}: expected q in (0, 1], z, S > 0 finite, dim ≥ 1, β in [0, 1), t ≥ 1, steps ≥ 1"
        )));
    }
    for &(q, sigma, steps) in &ledger.history {
        if !(q > 0.0 && q <= 1.0 && sigma > 0.0 && sigma.is_finite() && steps > 0) {
            return Err(LedgerError::Value(format!(
                "it holds the mechanism (q {q}, σ {sigma}, {steps} steps): expected q in (0, 1], σ > 0 finite, steps ≥ 1"
            )));
        }
    }
    Ok(ledger)
}

/// What a page found in storage for one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LedgerSlot {
    Known(DatasetLedger),
    /// Present but unusable: its records may have spent anything, so they are not trained on
    /// until the user resets the entry.
    Unreadable {
        fingerprint: String,
        reason: String,
    },
}

impl LedgerSlot {
    pub fn fingerprint(&self) -> &str {
        match self {
            Self::Known(l) => &l.fingerprint,
            Self::Unreadable { fingerprint, .. } => fingerprint,
        }
    }

    /// Reads a stored entry (the key's suffix is the fingerprint it must hold).
    pub fn from_stored(fingerprint: &str, text: &str) -> Self {
        match open(fingerprint, text) {
            Ok(l) => Self::Known(l),
            Err(e) => Self::Unreadable {
                fingerprint: fingerprint.into(),
                reason: e.to_string(),
            },
        }
    }
}

/// Serde for a measured number that may be NaN (a round evaluated without a test set, or a
/// broken model): JSON has no NaN, and serde_json would write `null` and then refuse to read it
/// back into an `f64` — every client decoding `RoundClosed` failed, the stored round could no
/// longer be read. Here NaN (or ±∞) is written as `null` and `null` read back as NaN.
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Serde for an ε that may be unbounded (a round trained without DP): JSON has no infinity, so
/// it travels as the string `"inf"`; a finite ε is a number, `None` is `null`.
pub mod maybe_infinite {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(f64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) if x.is_finite() => Wire::Number(*x).serialize(s),
            Some(x) if *x == f64::INFINITY => Wire::Text("inf".into()).serialize(s),
            Some(_) => Err(serde::ser::Error::custom("ε is NaN or −∞")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Wire>::deserialize(d)? {
            None => Ok(None),
            Some(Wire::Number(x)) if x >= 0.0 => Ok(Some(x)),
            Some(Wire::Text(t)) if t == "inf" => Ok(Some(f64::INFINITY)),
            Some(Wire::Number(x)) => Err(serde::de::Error::custom(format!(
                "ε is {x}: expected a number ≥ 0 or \"inf\""
            ))),
            Some(Wire::Text(t)) => Err(serde::de::Error::custom(format!(
                "ε is {t:?}: expected a number ≥ 0 or \"inf\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> DatasetLedger {
        DatasetLedger {
            fingerprint: fingerprint(b"images", b"labels"),
            // 7/60 and σ = 1.1f32: numbers whose shortest decimal form a naive parser reads
            // back one ulp off (a checksum over re-serialised numbers then failed).
            history: vec![(7.0 / 60.0, 1.1f32 as f64, 12), (1.0, 50.0, 1)],
            unprotected_rounds: 0,
            skellam: Vec::new(),
        }
    }

    fn seal(l: &DatasetLedger) -> String {
        super::seal(l).unwrap()
    }

    #[test]
    fn a_sealed_ledger_opens_as_it_was() {
        let l = ledger();
        assert_eq!(open(&l.fingerprint, &seal(&l)).unwrap(), l);
        assert_eq!(l.fingerprint.len(), 64);
        for q in (1..200).map(|b| b as f64 / 6007.0) {
            let l = DatasetLedger {
                history: vec![(q, 0.86f32 as f64, 3)],
                ..ledger()
            };
            assert_eq!(open(&l.fingerprint, &seal(&l)).unwrap(), l, "q = {q}");
        }
    }

    /// An IDX pair of `labels.len()` records, image i filled with `fill[i]`.
    fn idx(fill: &[u8], labels: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let n = labels.len() as u32;
        let mut images = vec![0, 0, 8, 3];
        for d in [n, 28, 28] {
            images.extend(d.to_be_bytes());
        }
        for &f in fill {
            images.extend([f; 784]);
        }
        let mut l = vec![0, 0, 8, 1];
        l.extend(n.to_be_bytes());
        l.extend(labels);
        (images, l)
    }

    #[test]
    fn the_fingerprint_names_the_records_not_their_order_or_extra_bytes() {
        let (i, l) = idx(&[1, 2, 3], &[7, 8, 9]);
        let (shuffled_i, shuffled_l) = idx(&[3, 1, 2], &[9, 7, 8]);
        assert_eq!(fingerprint(&i, &l), fingerprint(&shuffled_i, &shuffled_l));
        // Another record, or a label changed: another dataset.
        let (other_i, other_l) = idx(&[1, 2, 4], &[7, 8, 9]);
        assert_ne!(fingerprint(&i, &l), fingerprint(&other_i, &other_l));
        let (_, relabelled) = idx(&[1, 2, 3], &[7, 8, 0]);
        assert_ne!(fingerprint(&i, &l), fingerprint(&i, &relabelled));
        // A trailing byte makes the pair malformed (and refused for training): hashed as bytes.
        let mut padded = i.clone();
        padded.push(0);
        assert_ne!(fingerprint(&i, &l), fingerprint(&padded, &l));
        assert_ne!(
            fingerprint(b"images", b"labels"),
            fingerprint(b"imagesl", b"abels")
        );
    }

    fn skellam() -> SkellamMechanism {
        SkellamMechanism {
            sample_rate: 205.0 / 6000.0,
            noise_multiplier: 2.6,
            scale: 1000.0,
            dim: 12_810,
            beta: (-0.5f64).exp(),
            contributors: 7,
        }
    }

    #[test]
    fn distributed_steps_are_kept_merged_subtracted_and_checked() {
        let old = seal(&ledger());
        assert!(
            !old.contains("skellam"),
            "a ledger without distributed steps is stored as before"
        );
        let mut l = ledger();
        compose_skellam(&mut l.skellam, skellam(), 3);
        compose_skellam(&mut l.skellam, skellam(), 2);
        assert_eq!(l.skellam.len(), 1, "equal mechanisms merge");
        assert_eq!(l.skellam[0].steps, 5);
        let opened = open(&l.fingerprint, &seal(&l)).unwrap();
        assert_eq!(opened, l);
        let mut more = l.clone();
        more.skellam[0].steps += 4;
        assert_eq!(more.since(&l).skellam[0].steps, 4);
        let mut both = l.clone();
        both.add(&more.since(&l));
        assert_eq!(both.skellam[0].steps, 9);
        // A forged entry with t = 0 (its worst case divides by √t) or z = 0 does not open.
        for forged in [
            SkellamMechanism {
                contributors: 0,
                ..skellam()
            },
            SkellamMechanism {
                noise_multiplier: 0.0,
                ..skellam()
            },
            SkellamMechanism {
                beta: 1.0,
                ..skellam()
            },
        ] {
            let mut bad = l.clone();
            bad.skellam[0].mechanism = forged;
            assert!(matches!(
                open(&bad.fingerprint, &seal(&bad)),
                Err(LedgerError::Value(_))
            ));
        }
    }

    #[test]
    fn spending_from_two_tabs_adds_up() {
        // Two tabs read the same stored ledger, each spends, each stores only what it spent:
        // the stored ledger holds both (a tab writing its whole ledger back would erase the
        // other's spending).
        let stored = ledger();
        let mut tab_a = stored.clone();
        tab_a.history[0].2 += 5;
        let mut tab_b = stored.clone();
        tab_b.history.push((0.5, 2.0, 3));
        let mut merged = stored.clone();
        merged.add(&tab_a.since(&stored));
        merged.add(&tab_b.since(&stored));
        assert_eq!(merged.history[0].2, 12 + 5);
        assert_eq!(merged.history[2], (0.5, 2.0, 3));
        assert!(stored.since(&stored).history.is_empty());
    }

    #[test]
    fn an_edited_or_damaged_ledger_is_unreadable_never_zero() {
        let l = ledger();
        let text = seal(&l);
        // Steps lowered by hand: the checksum no longer matches.
        let edited = text.replace("12]", "1]");
        assert_ne!(edited, text);
        assert_eq!(open(&l.fingerprint, &edited), Err(LedgerError::Checksum));
        let slot = LedgerSlot::from_stored(&l.fingerprint, &edited);
        assert!(
            matches!(&slot, LedgerSlot::Unreadable { reason, .. } if reason.contains("changed outside")),
            "{slot:?}"
        );
        // Cut short, another dataset's entry, another version, a forged bad value.
        assert!(matches!(
            open(&l.fingerprint, &text[..20]),
            Err(LedgerError::Decode(_))
        ));
        assert!(matches!(
            open("00", &text),
            Err(LedgerError::Fingerprint { .. })
        ));
        let v2 = text.replace(r#""version":1"#, r#""version":2"#);
        assert_eq!(open(&l.fingerprint, &v2), Err(LedgerError::Version(2)));
        let mut forged = l.clone();
        forged.history[0].1 = -1.0;
        assert!(matches!(
            open(&l.fingerprint, &seal(&forged)),
            Err(LedgerError::Value(_))
        ));
    }

    #[test]
    fn infinite_epsilon_travels_as_a_string() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct E(#[serde(with = "maybe_infinite")] Option<f64>);
        for v in [None, Some(0.5), Some(f64::INFINITY)] {
            let text = serde_json::to_string(&E(v)).unwrap();
            assert_eq!(serde_json::from_str::<E>(&text).unwrap(), E(v), "{text}");
        }
        assert_eq!(
            serde_json::to_string(&E(Some(f64::INFINITY))).unwrap(),
            r#""inf""#
        );
        assert!(serde_json::from_str::<E>(r#""-inf""#).is_err());
        assert!(serde_json::from_str::<E>("-1").is_err());
    }
}
