output "region" {
  description = "The region's name."
  value       = var.region
}

output "gateways" {
  description = "Per gateway id: args (of the nexus binary), command (shell-quoted), config_file (TOML, the same settings) and config_path, systemd_unit, adapter_addr, metrics_addr, federation_addr."
  value = {
    for id, g in local.gateways : id => {
      args            = local.args[id]
      command         = local.command[id]
      config_file     = local.config[id]
      config_path     = local.config_path[id]
      systemd_unit    = local.units[id]
      unit_name       = "nexus-gateway-${id}.service"
      adapter_addr    = "${g.host}:${g.adapter_port}"
      metrics_addr    = "${g.host}:${g.metrics_port}"
      federation_addr = local.tls && g.has_cert ? "${g.host}:${g.federation_port}" : ""
      state_dir       = g.state_dir
    }
  }
}

output "files" {
  description = "Per gateway id: the files it needs on its host (path => {content, mode}): its TOML config, CA, certificate, key."
  value       = local.files
  sensitive   = true
}

output "cloud_init" {
  description = "Per gateway id: a cloud-init user-data document that writes the files and the unit and starts it."
  value       = local.cloud_init
  sensitive   = true
}

output "srv_records" {
  description = "DNS SRV records to publish for adapters (nexus+srv://<region>.<zone>): one per gateway, equal priority and weight."
  value = [
    for id, g in local.gateways : {
      name     = "_nexus._tcp.${var.region}.${var.dns_zone}"
      type     = "SRV"
      ttl      = var.dns_ttl
      priority = 10
      weight   = 10
      port     = g.adapter_port
      target   = g.host
      value    = "10 10 ${g.adapter_port} ${g.host}."
    }
  ]
}

output "firewall_rules" {
  description = "Ingress rules per gateway: TCP for adapters and metrics, UDP for QUIC federation and cluster links."
  value = flatten([
    for id, g in local.gateways : concat(
      [
        { gateway = id, host = g.host, protocol = "tcp", port = g.adapter_port, purpose = "adapters (gRPC)", sources = var.adapter_cidrs },
        { gateway = id, host = g.host, protocol = "tcp", port = g.metrics_port, purpose = "metrics and health", sources = var.monitoring_cidrs },
      ],
      local.tls && g.has_cert ? [
        { gateway = id, host = g.host, protocol = "udp", port = g.federation_port, purpose = "federation and cluster links (QUIC)", sources = var.peer_cidrs },
      ] : [],
    )
  ])
}
