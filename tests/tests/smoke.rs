use ferry::ObjectRef;
use ferry_tests::node_with_guest;

#[tokio::test]
async fn add_by_name() {
    let (_d, client, module) = node_with_guest();
    let r: ObjectRef<i64> = module.call("add", (20i64, 22i64)).unwrap();
    assert_eq!(client.get(&r).await.unwrap(), 42);
}
