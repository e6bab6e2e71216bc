//! Service map layout: services in columns by call depth (callers left of callees), edges
//! between them. Pure geometry; the page draws it as SVG.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub caller: String,
    pub callee: String,
    pub calls: u64,
    pub errors: u64,
    pub rate_per_second: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlacedNode {
    pub name: String,
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub nodes: Vec<PlacedNode>,
    pub width: f64,
    pub height: f64,
}

pub const NODE_WIDTH: f64 = 170.0;
pub const NODE_HEIGHT: f64 = 44.0;
const COLUMN_GAP: f64 = 130.0;
const ROW_GAP: f64 = 40.0;
const MARGIN: f64 = 20.0;

/// Places every service (those in `services` and those on an edge). A service's column is the
/// longest call chain reaching it, ignoring edges that close a cycle.
pub fn layout(services: &[String], edges: &[Edge]) -> Layout {
    let mut names: BTreeSet<String> = services.iter().cloned().collect();
    for e in edges {
        names.insert(e.caller.clone());
        names.insert(e.callee.clone());
    }
    let names: Vec<String> = names.into_iter().collect();
    let index = |n: &str| names.binary_search_by(|x| x.as_str().cmp(n)).ok();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for e in edges {
        if let (Some(a), Some(b)) = (index(&e.caller), index(&e.callee))
            && a != b
        {
            out_edges[a].push(b);
        }
    }
    // Longest-path layering over the graph with back edges removed (iterative DFS marks them).
    let mut state = vec![0u8; names.len()]; // 0 new, 1 on stack, 2 done
    let mut forward: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let mut finish_order = Vec::with_capacity(names.len());
    for start in 0..names.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((node, next)) = stack.pop() {
            if let Some(&child) = out_edges[node].get(next) {
                stack.push((node, next + 1));
                match state[child] {
                    0 => {
                        forward[node].push(child);
                        state[child] = 1;
                        stack.push((child, 0));
                    }
                    2 => forward[node].push(child),
                    _ => {} // back edge: part of a cycle, ignored for layering
                }
            } else {
                state[node] = 2;
                finish_order.push(node);
            }
        }
    }
    let mut column = vec![0usize; names.len()];
    for &node in finish_order.iter().rev() {
        for &child in &forward[node] {
            column[child] = column[child].max(column[node] + 1);
        }
    }
    let mut columns: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, c) in column.iter().enumerate() {
        columns.entry(*c).or_default().push(i);
    }
    let tallest = columns.values().map(Vec::len).max().unwrap_or(0) as f64;
    let height = MARGIN * 2.0 + tallest * NODE_HEIGHT + (tallest - 1.0).max(0.0) * ROW_GAP;
    let mut nodes = Vec::with_capacity(names.len());
    for (c, members) in &columns {
        let count = members.len() as f64;
        let used = count * NODE_HEIGHT + (count - 1.0).max(0.0) * ROW_GAP;
        let top = (height - used) / 2.0;
        for (row, &i) in members.iter().enumerate() {
            nodes.push(PlacedNode {
                name: names[i].clone(),
                x: MARGIN + *c as f64 * (NODE_WIDTH + COLUMN_GAP),
                y: top + row as f64 * (NODE_HEIGHT + ROW_GAP),
            });
        }
    }
    let columns_used = columns.keys().max().map_or(0, |m| m + 1) as f64;
    let width =
        MARGIN * 2.0 + columns_used * NODE_WIDTH + (columns_used - 1.0).max(0.0) * COLUMN_GAP;
    Layout {
        nodes,
        width: width.max(NODE_WIDTH + 2.0 * MARGIN),
        height: height.max(NODE_HEIGHT + 2.0 * MARGIN),
    }
}

/// Colour of a service, the same on every page: a hue from a hash of its name.
pub fn service_colour(name: &str) -> String {
    let mut h: u32 = 2_166_136_261;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    format!("hsl({}, 62%, 52%)", h % 360)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(a: &str, b: &str) -> Edge {
        Edge {
            caller: a.into(),
            callee: b.into(),
            calls: 1,
            errors: 0,
            rate_per_second: 1.0,
        }
    }

    fn column_of(l: &Layout, name: &str) -> f64 {
        l.nodes.iter().find(|n| n.name == name).expect("placed").x
    }

    #[test]
    fn callers_sit_left_of_callees() {
        let edges = [
            edge("frontend", "checkout"),
            edge("checkout", "payments"),
            edge("frontend", "inventory"),
            edge("checkout", "inventory"),
        ];
        let l = layout(&["lonely".to_string()], &edges);
        assert_eq!(l.nodes.len(), 5);
        assert!(column_of(&l, "frontend") < column_of(&l, "checkout"));
        assert!(column_of(&l, "checkout") < column_of(&l, "payments"));
        // inventory is reached by the longer chain through checkout.
        assert_eq!(column_of(&l, "inventory"), column_of(&l, "payments"));
        assert!(l.width > 0.0 && l.height > 0.0);
    }

    #[test]
    fn cycles_and_self_calls_terminate() {
        let l = layout(&[], &[edge("a", "b"), edge("b", "a"), edge("a", "a")]);
        assert_eq!(l.nodes.len(), 2);
        assert_ne!(column_of(&l, "a"), column_of(&l, "b"));
    }

    #[test]
    fn colours_are_stable() {
        assert_eq!(service_colour("frontend"), service_colour("frontend"));
        assert!(service_colour("x").starts_with("hsl("));
    }
}
