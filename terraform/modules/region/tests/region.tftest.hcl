# terraform test: the region module renders each gateway's command line, unit and cloud-init,
# its SRV records and firewall rules; bad input is refused with a message.

variables {
  region            = "eu-west"
  control_plane_url = "https://cp.example:7400"
  ca_cert_pem       = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
  gateways = [
    { id = "gw-1", host = "10.0.1.10" },
    { id = "gw-2", host = "10.0.1.11", adapter_port = 8422 },
  ]
  certificates = {
    "gw-1" = { cert_pem = "C1", key_pem = "K1" }
    "gw-2" = { cert_pem = "C2", key_pem = "K2" }
  }
}

run "renders_each_gateway" {
  command = plan

  assert {
    condition     = length(output.gateways) == 2
    error_message = "expected two gateways"
  }
  assert {
    condition     = contains(output.gateways["gw-1"].args, "--federation-listen") && contains(output.gateways["gw-1"].args, "0.0.0.0:7430")
    error_message = "a gateway with a certificate must listen for federation (QUIC)"
  }
  assert {
    condition     = contains(output.gateways["gw-2"].args, "10.0.1.11:8422")
    error_message = "the advertised adapter address must use the gateway's host and port"
  }
  assert {
    condition     = strcontains(output.gateways["gw-1"].systemd_unit, "ExecStart=/usr/local/bin/nexus gateway --region eu-west --gateway-id gw-1")
    error_message = "the unit must start the gateway: ${output.gateways["gw-1"].systemd_unit}"
  }
  assert {
    condition     = strcontains(output.gateways["gw-1"].systemd_unit, "Restart=on-failure") && strcontains(output.gateways["gw-1"].systemd_unit, "ProtectSystem=strict")
    error_message = "the unit must restart on failure and be sandboxed"
  }
  assert {
    condition     = contains(output.gateways["gw-1"].args, "--control-plane-ca")
    error_message = "an https:// control plane needs the CA and the gateway's client certificate"
  }
}

run "renders_a_config_file_per_gateway" {
  command = plan

  assert {
    condition     = strcontains(output.gateways["gw-1"].config_file, "[gateway]\nregion = \"eu-west\"\ngateway_id = \"gw-1\"")
    error_message = "the config file must name the region and gateway: ${output.gateways["gw-1"].config_file}"
  }
  assert {
    condition     = strcontains(output.gateways["gw-2"].config_file, "advertise = \"10.0.1.11:8422\"") && strcontains(output.gateways["gw-2"].config_file, "[federation]")
    error_message = "the config file must carry the advertised address and the federation section"
  }
  assert {
    condition     = output.gateways["gw-1"].config_path == "/etc/nexus/eu-west/gw-1.toml"
    error_message = "config path: ${output.gateways["gw-1"].config_path}"
  }
}

run "publishes_srv_and_firewall_rules" {
  command = plan

  assert {
    condition     = length(output.srv_records) == 2 && alltrue([for r in output.srv_records : r.name == "_nexus._tcp.eu-west.nexus.local"])
    error_message = "one SRV record per gateway under _nexus._tcp.<region>.<zone>"
  }
  assert {
    condition     = contains([for r in output.srv_records : r.value], "10 10 8422 10.0.1.11.")
    error_message = "SRV values are priority weight port target"
  }
  assert {
    condition     = length([for r in output.firewall_rules : r if r.protocol == "udp" && r.port == 7430]) == 2
    error_message = "each gateway needs UDP for QUIC links"
  }
  assert {
    condition     = length([for r in output.firewall_rules : r if r.protocol == "tcp" && r.port == 7422]) == 1
    error_message = "gw-1's adapter port is TCP 7422"
  }
}

run "cloud_init_writes_certificates_and_unit" {
  command = plan

  assert {
    condition     = startswith(nonsensitive(output.cloud_init["gw-1"]), "#cloud-config\n")
    error_message = "cloud-init user data starts with #cloud-config"
  }
  assert {
    condition     = length(yamldecode(nonsensitive(output.cloud_init["gw-1"])).write_files) == 5
    error_message = "config file, CA, certificate, key and unit are written"
  }
}

run "without_certificates_no_federation" {
  command = plan
  variables {
    ca_cert_pem       = ""
    certificates      = {}
    control_plane_url = "http://127.0.0.1:7400"
  }
  assert {
    condition     = !contains(output.gateways["gw-1"].args, "--federation-listen") && output.gateways["gw-1"].federation_addr == ""
    error_message = "no certificate, no federation listener"
  }
  assert {
    condition     = length([for r in output.firewall_rules : r if r.protocol == "udp"]) == 0
    error_message = "no UDP rule without federation"
  }
  assert {
    condition     = !contains(output.gateways["gw-1"].args, "--insecure") && !contains(output.gateways["gw-1"].args, "--tls-cert")
    error_message = "plaintext on a public address only when asked for"
  }
}

run "insecure_when_asked" {
  command = plan
  variables {
    ca_cert_pem  = ""
    certificates = {}
    insecure     = true
  }
  assert {
    condition     = contains(output.gateways["gw-1"].args, "--insecure")
    error_message = "insecure adds --insecure"
  }
}

run "bad_region_is_refused" {
  command = plan
  variables {
    region = "EU West"
  }
  expect_failures = [var.region]
}

run "duplicate_gateway_ids_are_refused" {
  command = plan
  variables {
    gateways = [{ id = "gw-1", host = "a" }, { id = "gw-1", host = "b" }]
  }
  expect_failures = [var.gateways]
}
