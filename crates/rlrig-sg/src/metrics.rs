//! LAION-SG's IoU metrics (repo mengcye/LAION-SG, `test/test_iou.py`) and relation accuracy.
//!
//! For one image, the ground-truth scene graph and the graph extracted from the image (by the
//! oracle parser in the built-in world, by a VLM judge elsewhere) are compared as sets:
//!
//! * **SG-IoU**: the sets of `(subject, predicate, object)` triples;
//! * **Entity-IoU**: the sets of item strings (node texts, `red circle`);
//! * **Relation-IoU**: the sets of predicate strings (`left of`).
//!
//! `iou(A, B) = |A ∩ B| / |A ∪ B|` on exact strings, each side de-duplicated, 0 when the union
//! is empty. A dataset's score is the mean of the per-image scores.

use std::collections::HashSet;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::{SceneGraph, Triple};

/// Set IoU of two collections, de-duplicated; 0 when both are empty.
pub fn iou<T: Eq + Hash>(a: impl IntoIterator<Item = T>, b: impl IntoIterator<Item = T>) -> f64 {
    let a: HashSet<T> = a.into_iter().collect();
    let b: HashSet<T> = b.into_iter().collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// What an extractor found in one image: triples, entity strings and predicate strings.
///
/// LAION-SG's judge answers these three lists separately; a [`SceneGraph`] gives all three
/// with [`Extraction::from`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// Extracted `(subject, predicate, object)` triples.
    pub triples: Vec<Triple>,
    /// Extracted entity strings.
    pub entities: Vec<String>,
    /// Extracted predicate strings.
    pub predicates: Vec<String>,
}

impl From<&SceneGraph> for Extraction {
    fn from(g: &SceneGraph) -> Self {
        Extraction {
            triples: g.triples(),
            entities: g.entities(),
            predicates: g.predicates(),
        }
    }
}

impl Extraction {
    /// What a LAION-SG judge can answer about this image: it is given the ground truth's
    /// items as candidate subjects/objects and its predicates as candidate relations, so it can
    /// only name those. Keeps the triples whose subject, predicate and object are all among the
    /// ground truth's, and the entities and predicates that are among them.
    pub fn as_judged_against(&self, truth: &SceneGraph) -> Extraction {
        let entities: HashSet<String> = truth.entities().into_iter().collect();
        let predicates: HashSet<String> = truth.predicates().into_iter().collect();
        Extraction {
            triples: self
                .triples
                .iter()
                .filter(|t| {
                    entities.contains(&t.subject)
                        && entities.contains(&t.object)
                        && predicates.contains(&t.predicate)
                })
                .cloned()
                .collect(),
            entities: self
                .entities
                .iter()
                .filter(|e| entities.contains(*e))
                .cloned()
                .collect(),
            predicates: self
                .predicates
                .iter()
                .filter(|p| predicates.contains(*p))
                .cloned()
                .collect(),
        }
    }
}

/// The three IoUs of one image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IouScores {
    /// Triple-set IoU.
    pub sg_iou: f64,
    /// Entity-set IoU.
    pub entity_iou: f64,
    /// Predicate-set IoU.
    pub relation_iou: f64,
}

/// Scores one image: `truth` is the prompt's scene graph, `found` what was extracted.
pub fn score(truth: &SceneGraph, found: &Extraction) -> IouScores {
    IouScores {
        sg_iou: iou(truth.triples().iter(), found.triples.iter()),
        entity_iou: iou(truth.entities(), found.entities.iter().cloned()),
        relation_iou: iou(truth.predicates(), found.predicates.iter().cloned()),
    }
}

/// The fraction of the prompt's relations that hold, i.e. whose triple was extracted.
/// `None` for a prompt without relations. Duplicate prompt relations count once.
pub fn relation_accuracy(truth: &SceneGraph, found: &Extraction) -> Option<f64> {
    let wanted: HashSet<Triple> = truth.triples().into_iter().collect();
    if wanted.is_empty() {
        return None;
    }
    let got: HashSet<&Triple> = found.triples.iter().collect();
    Some(wanted.iter().filter(|t| got.contains(t)).count() as f64 / wanted.len() as f64)
}

/// Means over a set of images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanScores {
    /// Number of images.
    pub n: usize,
    /// Mean per-image IoUs (0 for an empty set).
    pub mean: IouScores,
    /// Mean relation accuracy over the images whose prompt has relations (`None` if none has).
    pub relation_accuracy: Option<f64>,
}

impl MeanScores {
    /// Means of per-image `(scores, relation accuracy)` pairs.
    pub fn from_images(images: impl IntoIterator<Item = (IouScores, Option<f64>)>) -> Self {
        let mut sums = ScoreSums::default();
        images.into_iter().for_each(|i| sums.add(i));
        sums.mean()
    }
}

/// The running sums behind a [`MeanScores`], for images scored one at a time: a long run
/// keeps these, not every image's scores.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScoreSums {
    n: usize,
    sum: IouScores,
    accuracy_n: usize,
    accuracy_sum: f64,
}

impl ScoreSums {
    /// Adds one image's `(scores, relation accuracy)`.
    pub fn add(&mut self, (s, accuracy): (IouScores, Option<f64>)) {
        self.n += 1;
        self.sum.sg_iou += s.sg_iou;
        self.sum.entity_iou += s.entity_iou;
        self.sum.relation_iou += s.relation_iou;
        if let Some(a) = accuracy {
            self.accuracy_n += 1;
            self.accuracy_sum += a;
        }
    }

    /// The means of the images added so far.
    pub fn mean(&self) -> MeanScores {
        let d = self.n.max(1) as f64;
        MeanScores {
            n: self.n,
            mean: IouScores {
                sg_iou: self.sum.sg_iou / d,
                entity_iou: self.sum.entity_iou / d,
                relation_iou: self.sum.relation_iou / d,
            },
            relation_accuracy: (self.accuracy_n > 0)
                .then(|| self.accuracy_sum / self.accuracy_n as f64),
        }
    }
}
