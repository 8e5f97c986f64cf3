# terraform test: the control-plane module renders instances over etcd (or the embedded
# store), TLS flags, DNS delegation and firewall rules.

variables {
  hosts = [
    { name = "cp-1", host = "10.0.0.5" },
    { name = "cp-2", host = "10.0.0.6" },
  ]
  etcd_endpoints = ["https://etcd-1:2379", "https://etcd-2:2379"]
  ca_cert_pem    = "CA"
  cert_pem       = "CERT"
  key_pem        = "KEY"
}

run "instances_over_etcd_with_tls" {
  command = plan

  assert {
    condition     = output.url == "https://10.0.0.5:7400"
    error_message = "with a certificate the URL is https://"
  }
  assert {
    condition     = length(output.instances) == 2
    error_message = "two instances"
  }
  assert {
    condition     = strcontains(output.instances["cp-1"].command, "--etcd https://etcd-1:2379 --etcd https://etcd-2:2379")
    error_message = "every etcd endpoint is passed: ${output.instances["cp-1"].command}"
  }
  assert {
    condition     = !contains(output.instances["cp-1"].args, "--data-dir")
    error_message = "with etcd there is no embedded store"
  }
  assert {
    condition     = contains(output.instances["cp-1"].args, "--tls-client-ca") && contains(output.instances["cp-1"].args, "--tls-cert")
    error_message = "TLS flags from the certificate material"
  }
  assert {
    condition     = strcontains(output.instances["cp-1"].systemd_unit, "AmbientCapabilities=CAP_NET_BIND_SERVICE")
    error_message = "DNS on port 53 needs CAP_NET_BIND_SERVICE"
  }
  assert {
    condition     = length(output.dns_delegation) == 2 && output.dns_delegation[0].type == "NS"
    error_message = "NS delegation per instance"
  }
  assert {
    condition     = length([for r in output.firewall_rules : r if r.protocol == "tcp" && r.port == 7400]) == 2 && length([for r in output.firewall_rules : r if r.protocol == "udp" && r.port == 53]) == 2
    error_message = "Admin API over TCP and DNS over UDP on each instance"
  }
}

run "embedded_store_for_one_instance" {
  command = plan
  variables {
    hosts          = [{ name = "dev", host = "127.0.0.1", listen_host = "127.0.0.1" }]
    etcd_endpoints = []
    cert_pem       = ""
    ca_cert_pem    = ""
    dns_port       = 0
  }
  assert {
    condition     = output.url == "http://127.0.0.1:7400" && contains(output.instances["dev"].args, "--data-dir")
    error_message = "the embedded store without etcd, plaintext without a certificate"
  }
  assert {
    condition     = length(output.dns_delegation) == 0 && length(output.firewall_rules) == 1
    error_message = "no DNS without dns_port"
  }
}

run "embedded_store_with_two_instances_warns" {
  command = plan
  variables {
    etcd_endpoints = []
  }
  expect_failures = [check.embedded_store_is_single_instance]
}

run "bad_admin_auth_is_refused" {
  command = plan
  variables {
    admin_auth = "maybe"
  }
  expect_failures = [var.admin_auth]
}
