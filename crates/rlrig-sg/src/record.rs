//! The LAION-SG record: items with attributes, relations between them by `item_id`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One scene graph in LAION-SG's record shape.
///
/// `{"img_id", "name", "caption_ori", "items": [..], "relations": [..], ...}`. Fields this type
/// does not name (LAION-SG's `score`, `url`, or anything else) are kept in [`SceneGraph::extra`]
/// and written back unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SceneGraph {
    /// The record id. LAION-SG writes it as a string; an integer is accepted and kept as text.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_integer"
    )]
    pub img_id: Option<String>,
    /// The image file name this record describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The original caption, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_ori: Option<String>,
    /// The objects of the scene.
    pub items: Vec<Item>,
    /// Directed relations `item1 relation item2` between items, by `item_id`.
    #[serde(default)]
    pub relations: Vec<Relation>,
    /// Every other field of the record, kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One object: a label (the noun) and its attributes (adjectives).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Identifier of the item within its record; relations refer to it.
    pub item_id: u64,
    /// The noun, e.g. `circle` or `waterfall`.
    pub label: String,
    /// Attributes in order, e.g. `["red"]`; may be empty.
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Every other field of the item (LAION-SG's `global_item_id`, ...), kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A directed relation: `item1 relation item2`, e.g. `0 "left of" 1`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Relation {
    /// Position of the relation in LAION-SG's numbering, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triple_id: Option<u64>,
    /// `item_id` of the subject.
    pub item1: u64,
    /// The predicate, possibly several words (`left of`, `sitting on`).
    pub relation: String,
    /// `item_id` of the object.
    pub item2: u64,
    /// Every other field of the relation, kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A relation spelled out in node texts: `(subject, predicate, object)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Triple {
    /// Node text of the subject, e.g. `red circle`.
    pub subject: String,
    /// The predicate, e.g. `left of`.
    pub predicate: String,
    /// Node text of the object.
    pub object: String,
}

impl fmt::Display for Triple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.subject, self.predicate, self.object)
    }
}

/// A record that parsed as JSON but breaks a rule of the format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field, e.g. `relations[1].item2`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Item {
    /// The node text as LAION-SG's loader builds it: attributes joined by spaces, a space, the
    /// label (`red circle`). With no attributes it is the label alone (the loader's join would
    /// leave a leading space; rlrig trims it so that node strings compare exactly).
    pub fn node_text(&self) -> String {
        if self.attributes.is_empty() {
            self.label.clone()
        } else {
            format!("{} {}", self.attributes.join(" "), self.label)
        }
    }
}

impl SceneGraph {
    /// Checks the rules JSON alone cannot express: at least one item, unique `item_id`s,
    /// non-empty labels, attributes and predicates, relations that name existing items.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let err = |field: String, message: String| Err(ValidationError { field, message });
        if self.items.is_empty() {
            return err(
                "items".into(),
                "a scene graph needs at least one item".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, item) in self.items.iter().enumerate() {
            if !seen.insert(item.item_id) {
                return err(
                    format!("items[{i}].item_id"),
                    format!("item_id {} is used by an earlier item", item.item_id),
                );
            }
            if item.label.trim().is_empty() {
                return err(format!("items[{i}].label"), "empty label".into());
            }
            for (j, a) in item.attributes.iter().enumerate() {
                if a.trim().is_empty() {
                    return err(
                        format!("items[{i}].attributes[{j}]"),
                        "empty attribute".into(),
                    );
                }
            }
        }
        for (i, rel) in self.relations.iter().enumerate() {
            for (key, id) in [("item1", rel.item1), ("item2", rel.item2)] {
                if !seen.contains(&id) {
                    return err(
                        format!("relations[{i}].{key}"),
                        format!("no item has item_id {id}"),
                    );
                }
            }
            if rel.relation.trim().is_empty() {
                return err(format!("relations[{i}].relation"), "empty relation".into());
            }
        }
        Ok(())
    }

    /// The item with this `item_id`.
    pub fn item(&self, item_id: u64) -> Option<&Item> {
        self.items.iter().find(|it| it.item_id == item_id)
    }

    /// Every relation spelled out in node texts, in record order. Relations naming a missing
    /// item are skipped (a validated record has none).
    pub fn triples(&self) -> Vec<Triple> {
        let nodes: HashMap<u64, String> = self
            .items
            .iter()
            .map(|it| (it.item_id, it.node_text()))
            .collect();
        self.relations
            .iter()
            .filter_map(|r| {
                Some(Triple {
                    subject: nodes.get(&r.item1)?.clone(),
                    predicate: r.relation.clone(),
                    object: nodes.get(&r.item2)?.clone(),
                })
            })
            .collect()
    }

    /// Node texts of all items, in record order.
    pub fn entities(&self) -> Vec<String> {
        self.items.iter().map(Item::node_text).collect()
    }

    /// Predicates of all relations, in record order.
    pub fn predicates(&self) -> Vec<String> {
        self.relations.iter().map(|r| r.relation.clone()).collect()
    }

    /// The prompt text as LAION-SG's loader builds it: each relation as
    /// `subject relation object`, joined by `"; "`, then every item that is in no relation,
    /// as its node text, in item order (`red circle left of blue square; green triangle`).
    pub fn prompt(&self) -> String {
        let mut parts: Vec<String> = self.triples().iter().map(Triple::to_string).collect();
        let related: HashSet<u64> = self
            .relations
            .iter()
            .flat_map(|r| [r.item1, r.item2])
            .collect();
        parts.extend(
            self.items
                .iter()
                .filter(|it| !related.contains(&it.item_id))
                .map(Item::node_text),
        );
        parts.join("; ")
    }
}

fn string_or_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or an integer")]
    enum Id {
        S(String),
        U(u64),
        I(i64),
    }
    Ok(Option::<Id>::deserialize(d)?.map(|id| match id {
        Id::S(s) => s,
        Id::U(u) => u.to_string(),
        Id::I(i) => i.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, label: &str, attrs: &[&str]) -> Item {
        Item {
            item_id: id,
            label: label.into(),
            attributes: attrs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn rel(a: u64, r: &str, b: u64) -> Relation {
        Relation {
            item1: a,
            relation: r.into(),
            item2: b,
            ..Default::default()
        }
    }

    #[test]
    fn prompt_joins_triples_then_isolated_items() {
        let g = SceneGraph {
            items: vec![
                item(0, "circle", &["red"]),
                item(1, "square", &["blue"]),
                item(2, "triangle", &["green"]),
                item(5, "lake", &[]),
            ],
            relations: vec![rel(0, "left of", 1), rel(1, "above", 0)],
            ..Default::default()
        };
        assert_eq!(
            g.prompt(),
            "red circle left of blue square; blue square above red circle; green triangle; lake"
        );
        assert_eq!(
            item(0, "house", &["stone", "small"]).node_text(),
            "stone small house"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut g = SceneGraph {
            items: vec![item(0, "circle", &["red"]), item(1, "square", &["blue"])],
            relations: vec![rel(0, "left of", 7)],
            ..Default::default()
        };
        let e = g.validate().unwrap_err();
        assert_eq!(e.field, "relations[0].item2");
        g.relations.clear();
        g.items[1].item_id = 0;
        assert_eq!(g.validate().unwrap_err().field, "items[1].item_id");
        g.items.clear();
        assert_eq!(g.validate().unwrap_err().field, "items");
    }
}
