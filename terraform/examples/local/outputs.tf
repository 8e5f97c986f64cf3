output "control_plane" {
  description = "NEXUS_CONTROL_PLANE for nexusctl."
  value       = local.cp_url
}

output "admin_key_file" {
  description = "NEXUS_ADMIN_KEY_FILE for nexusctl."
  value       = "${local.dir}/cp/admin.key"
}

output "gateways" {
  description = "Adapter address of each gateway."
  value       = { for id, g in local.gateways : id => "http://127.0.0.1:${g.adapter_port}" }
}

output "registered_gateways" {
  description = "Gateways the control plane listed right after they started (some may still have been registering)."
  value       = [for g in data.nexus_gateways.all.gateways : "${g.region}/${g.id}"]
}

output "app_key" {
  description = "The example application's API key (terraform output -raw app_key)."
  value       = nexus_api_key.app.secret
  sensitive   = true
}

output "srv_records" {
  description = "The SRV records a real deployment would publish."
  value       = flatten([for r in module.region : r.srv_records])
}
