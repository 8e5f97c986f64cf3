output "url" {
  description = "The control plane address for gateways and nexusctl (the first instance; put a load balancer or DNS name in front of several)."
  value       = "${local.scheme}://${var.hosts[0].host}:${var.port}"
}

output "instances" {
  description = "Per instance name: args (of the nexus binary), command (shell-quoted), systemd_unit, url."
  value = {
    for h in var.hosts : h.name => {
      args         = local.args[h.name]
      command      = local.command[h.name]
      systemd_unit = local.units[h.name]
      unit_name    = "nexus-control-plane.service"
      url          = "${local.scheme}://${h.host}:${var.port}"
    }
  }
}

output "admin_key_file" {
  description = "Where the first instance writes the bootstrap admin key (on its host)."
  value       = "${var.data_dir}/admin.key"
}

output "files" {
  description = "Files every instance needs (path => {content, mode})."
  value       = local.files
  sensitive   = true
}

output "cloud_init" {
  description = "Per instance: a cloud-init user-data document that writes the files and the unit and starts it."
  value       = local.cloud_init
  sensitive   = true
}

output "dns_delegation" {
  description = "NS records delegating the discovery zone to the instances (publish in the parent zone, with A/AAAA glue for the hosts)."
  value = var.dns_port > 0 ? [
    for h in var.hosts : { name = var.dns_zone, type = "NS", value = "${h.host}." }
  ] : []
}

output "firewall_rules" {
  description = "Ingress rules per instance: TCP for the Admin API and gateway sync, UDP and TCP for DNS discovery."
  value = flatten([
    for h in var.hosts : concat(
      [{ instance = h.name, host = h.host, protocol = "tcp", port = var.port, purpose = "Admin API and gateway sync (gRPC)", sources = var.admin_cidrs }],
      var.dns_port > 0 ? [
        { instance = h.name, host = h.host, protocol = "udp", port = var.dns_port, purpose = "DNS discovery", sources = var.dns_cidrs },
        { instance = h.name, host = h.host, protocol = "tcp", port = var.dns_port, purpose = "DNS discovery", sources = var.dns_cidrs },
      ] : [],
    )
  ])
}
