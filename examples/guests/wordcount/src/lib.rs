//! Map-reduce word count: `count_words` maps a chunk of text to counts, `merge` reduces many
//! count tables (passed as refs) into one.

use std::collections::BTreeMap;

use ferry_guest::prelude::*;

/// Word counts.
pub type Counts = BTreeMap<String, u64>;

/// Counts the words of one chunk (lower-cased, split on anything that is not a letter).
#[remote]
pub fn count_words(text: String) -> Counts {
    let mut counts = Counts::new();
    for word in text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    counts
}

/// Merges count tables. They arrive as refs, so a reducer can be handed a long list without
/// the driver moving any data; the reducer fetches each table itself.
#[remote]
pub fn merge(parts: Vec<ObjectRef<Counts>>) -> Result<Counts, Error> {
    let mut total = Counts::new();
    for part in &parts {
        for (word, n) in part.get()? {
            *total.entry(word).or_default() += n;
        }
    }
    Ok(total)
}
