# terraform test for the provider (run by tests/terraform.rs with a live control plane):
# create, update in place, replace, and a schema's new version.

variables {
  suffix = "-tftest"
}

run "create" {
  assert {
    condition     = nexus_api_key.k.cert_names == tolist(["tf-tftest.client.nexus"])
    error_message = "the key is bound to its client certificate name"
  }
  assert {
    condition     = nexus_route.r.version >= 1 && nexus_route.r.id == "tf-route-tftest"
    error_message = "the route is created with a store version"
  }
  assert {
    condition     = length(nonsensitive(nexus_api_key.k.secret)) > 10
    error_message = "the key's secret is known to the run that created it"
  }
  assert {
    condition     = nexus_schema.s.version == 1 && nexus_schema.s.compatibility == "BACKWARD" && nexus_schema.s.enforcement == "warn"
    error_message = "the schema is registered as version 1 with its mode"
  }
  assert {
    condition     = startswith(nexus_gateway_certificate.g.cert_pem, "-----BEGIN CERTIFICATE-----") && nexus_gateway_certificate.g.id == "tf-a-tftest/gw-1"
    error_message = "the gateway certificate is issued"
  }
  assert {
    condition     = contains(data.nexus_topology.t.regions, "tf-a-tftest") && contains(data.nexus_topology.t.regions, "tf-b-tftest")
    error_message = "the topology lists both regions: ${jsonencode(data.nexus_topology.t.regions)}"
  }
}

run "update_in_place" {
  variables {
    policy = "nearest"
  }
  assert {
    condition     = nexus_route.r.policy == "nearest" && nexus_route.r.pinned_region == "" && nexus_route.r.version > run.create.route_version
    error_message = "the route changes in place and its version moves on"
  }
  assert {
    condition     = nexus_api_key.k.id == run.create.key_id
    error_message = "the key is not replaced by an unrelated change"
  }
}

run "key_binding_changes_in_place" {
  variables {
    policy     = "nearest"
    cert_names = []
  }
  assert {
    condition     = nexus_api_key.k.id == run.create.key_id && length(nexus_api_key.k.cert_names) == 0
    error_message = "lifting the key's certificate binding keeps the key"
  }
}

run "new_schema_version" {
  variables {
    compatibility = "NONE"
    definition    = jsonencode({ type = "object", properties = { id = { type = "integer" } } })
  }
  assert {
    condition     = nexus_schema.s.version == 2 && nexus_schema.s.compatibility == "NONE"
    error_message = "a new definition registers version 2"
  }
}
