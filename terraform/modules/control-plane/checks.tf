check "embedded_store_is_single_instance" {
  assert {
    condition     = length(var.etcd_endpoints) > 0 || length(var.hosts) == 1
    error_message = "Without etcd_endpoints each instance would have its own embedded store: use one instance, or give etcd endpoints."
  }
}
