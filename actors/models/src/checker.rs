//! The Checker's inference: the questions a prompt asks, and the findings and the scene graph
//! the Checker's answers give. [`crate::roles`]'s Checker and the evaluation of
//! [`crate::vlm_train`] and [`crate::quality`] share it.

use crate::ModelError;
use rlrig_contract::sg::{Extraction, Triple};
use rlrig_contract::{Image, ItemVerdict, RelationVerdict};
use rlrig_world::reflect::Findings;
use rlrig_world::{Rel, WorldGraph};

use crate::text::Tokenizer;
use crate::vlm::CheckerNet;

/// One question of the Checker: its words and which requirement it asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Question {
    /// Is item `i` there?
    Item(usize),
    /// Does relation `i` hold?
    Relation(usize),
}

/// The questions of a prompt, items first, and their token ids (no `<bos>`).
pub fn questions(graph: &WorldGraph) -> Vec<(Question, Vec<u32>)> {
    let tok = Tokenizer::full(usize::MAX);
    let ids = |text: String| {
        tok.tokens(&text)
            .expect("world words are in the vocabulary")
    };
    let mut out: Vec<(Question, Vec<u32>)> = graph
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| (Question::Item(i), ids(o.to_string())))
        .collect();
    for (i, &(a, rel, b)) in graph.relations.iter().enumerate() {
        out.push((
            Question::Relation(i),
            ids(format!("{} {rel} {}", graph.objects[a], graph.objects[b])),
        ));
    }
    out
}

/// The Checker's findings on a batch of scenes, from its answers.
pub fn checker_findings(
    net: &CheckerNet,
    scenes: &[(&WorldGraph, &Image)],
) -> Result<Vec<Findings>, ModelError> {
    let mut out: Vec<Findings> = scenes
        .iter()
        .map(|(g, _)| Findings {
            items: vec![ItemVerdict::Present; g.objects.len()],
            relations: vec![RelationVerdict::Holds; g.relations.len()],
            actual: vec![Vec::new(); g.relations.len()],
        })
        .collect();
    for (chunk_no, chunk) in scenes.chunks(64).enumerate() {
        let asked: Vec<Vec<(Question, Vec<u32>)>> =
            chunk.iter().map(|(g, _)| questions(g)).collect();
        if asked.iter().all(Vec::is_empty) {
            continue;
        }
        let images: Vec<Image> = chunk.iter().map(|(_, i)| (*i).clone()).collect();
        let words: Vec<Vec<Vec<u32>>> = asked
            .iter()
            .map(|qs| qs.iter().map(|(_, w)| w.clone()).collect())
            .collect();
        let mut answers = net.answer(&images, &words)?.into_iter();
        for (k, qs) in asked.iter().enumerate() {
            let f = &mut out[chunk_no * 64 + k];
            for (q, _) in qs {
                let (v, p) = answers.next().ok_or("the Checker gave too few answers")?;
                match *q {
                    Question::Item(i) => {
                        f.items[i] = if v[0] >= v[1] {
                            ItemVerdict::Present
                        } else {
                            ItemVerdict::Missing
                        };
                    }
                    Question::Relation(i) => {
                        let best = (0..3)
                            .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                            .expect("three");
                        f.relations[i] = [
                            RelationVerdict::Holds,
                            RelationVerdict::Violated,
                            RelationVerdict::CannotTell,
                        ][best];
                        if best == 1 {
                            f.actual[i] = (0..4)
                                .filter(|&r| p[r] > 0.5)
                                .map(|r| Rel::ALL[r])
                                .collect();
                        }
                    }
                }
            }
        }
    }
    // A relation whose endpoint the Checker itself finds missing cannot be told.
    for (f, (g, _)) in out.iter_mut().zip(scenes) {
        for (i, &(a, _, b)) in g.relations.iter().enumerate() {
            if f.items[a] == ItemVerdict::Missing || f.items[b] == ItemVerdict::Missing {
                f.relations[i] = RelationVerdict::CannotTell;
                f.actual[i].clear();
            }
        }
    }
    Ok(out)
}

/// The scene graph the Checker sees in each image, under LAION-SG's protocol: the present
/// items (by the Checker's item verdicts in `findings`) are the entities, and each ordered pair
/// of present items is asked about each predicate the prompt uses — one relation question
/// each, as the prompt's own relations are asked; a `holds` answer is a triple.
pub fn checker_graphs(
    net: &CheckerNet,
    scenes: &[(&WorldGraph, &Image)],
    findings: &[Findings],
) -> Result<Vec<Extraction>, ModelError> {
    // Per scene: the triples asked about, and their question words.
    let asked: Vec<Vec<(Triple, Vec<u32>)>> = scenes
        .iter()
        .zip(findings)
        .map(|((g, _), f)| pair_questions(g, f))
        .collect::<Result<_, _>>()?;
    let mut out: Vec<Extraction> = scenes
        .iter()
        .zip(findings)
        .map(|((g, _), f)| Extraction {
            entities: present_words(g, f),
            ..Extraction::default()
        })
        .collect();
    let idx: Vec<usize> = (0..scenes.len())
        .filter(|&k| !asked[k].is_empty())
        .collect();
    for chunk in idx.chunks(64) {
        let images: Vec<Image> = chunk.iter().map(|&k| scenes[k].1.clone()).collect();
        let words: Vec<Vec<Vec<u32>>> = chunk
            .iter()
            .map(|&k| asked[k].iter().map(|(_, w)| w.clone()).collect())
            .collect();
        let mut answers = net.answer(&images, &words)?.into_iter();
        for &k in chunk {
            for (t, _) in &asked[k] {
                let (v, _) = answers.next().ok_or("the Checker gave too few answers")?;
                // Verdict classes: 0 holds, 1 violated, 2 cannot tell.
                if v[0] > v[1] && v[0] > v[2] {
                    out[k].triples.push(t.clone());
                }
            }
        }
    }
    for e in &mut out {
        let mut preds: Vec<String> = e.triples.iter().map(|t| t.predicate.clone()).collect();
        preds.sort();
        preds.dedup();
        e.predicates = preds;
    }
    Ok(out)
}

/// The words of the prompt items the Checker finds present, sorted, each once.
fn present_words(g: &WorldGraph, f: &Findings) -> Vec<String> {
    let mut present: Vec<String> = g
        .objects
        .iter()
        .zip(&f.items)
        .filter(|(_, v)| **v == ItemVerdict::Present)
        .map(|(o, _)| o.to_string())
        .collect();
    present.sort();
    present.dedup();
    present
}

/// The triples a scene's graph question asks about: every ordered pair of distinct present
/// items (by their words) and every predicate of the prompt.
fn pair_questions(g: &WorldGraph, f: &Findings) -> Result<Vec<(Triple, Vec<u32>)>, ModelError> {
    let tok = Tokenizer::full(usize::MAX);
    let mut preds: Vec<Rel> = g.relations.iter().map(|&(_, r, _)| r).collect();
    preds.sort_by_key(|r| r.word());
    preds.dedup();
    let present = present_words(g, f);
    let mut out = Vec::new();
    for a in &present {
        for b in present.iter().filter(|b| *b != a) {
            for r in &preds {
                let text = format!("{a} {r} {b}");
                let ids = tok.tokens(&text).map_err(|e| format!("{text:?}: {e}"))?;
                out.push((
                    Triple {
                        subject: a.clone(),
                        predicate: r.word().to_owned(),
                        object: b.clone(),
                    },
                    ids,
                ));
            }
        }
    }
    Ok(out)
}
