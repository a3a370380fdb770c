//! DRY's breaker tables are built once per breaker list and shared, so only a list not seen among the last
//! few requests pays for matching it against the vocabulary.

use std::sync::Arc;

use gemma_server::engine::DryTables;

#[test]
fn a_breaker_list_is_built_once_and_the_oldest_of_nine_is_dropped() {
    let path = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).expect("the test model is available");
    let model = gemma_core::Model::open(&path).expect("model loads");
    let tokenizer = model.tokenizer().expect("tokenizer");
    let tables = DryTables::default();
    let list = |i: usize| vec![format!("<{i}>"), "\n".to_string()];
    let first = tables.get(&tokenizer, &list(0));
    assert!(Arc::ptr_eq(&first, &tables.get(&tokenizer, &list(0))), "the same list is the same table");
    let built: Vec<_> = (1..8).map(|i| tables.get(&tokenizer, &list(i))).collect();
    assert!(Arc::ptr_eq(&first, &tables.get(&tokenizer, &list(0))), "eight lists fit");
    // That use made list 0 the newest: list 1 is now the oldest and goes when a ninth list comes.
    tables.get(&tokenizer, &list(8));
    assert!(Arc::ptr_eq(&built[1], &tables.get(&tokenizer, &list(2))), "list 2 stays");
    assert!(!Arc::ptr_eq(&built[0], &tables.get(&tokenizer, &list(1))), "list 1 is built again");
}
