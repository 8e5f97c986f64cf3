# A control plane and three regions of two gateways each on loopback, started and stopped by
# Terraform as detached processes (terraform_data + local-exec: nexus-proc.sh keeps a pid file
# per process and stops it on destroy), then routes, schemas and keys through the Nexus
# provider. docs/deploy.md ("Terraform") shows how to install the provider.

terraform {
  required_version = ">= 1.5"
  required_providers {
    nexus = {
      source = "nexus/nexus"
    }
  }
}

locals {
  dir    = abspath(var.work_dir != "" ? var.work_dir : "${path.root}/.run")
  script = abspath("${path.module}/nexus-proc.sh")
  cp_url = "http://127.0.0.1:${var.base_port}"

  gateways = {
    for pair in setproduct(range(length(var.regions)), range(var.gateways_per_region)) :
    "${var.regions[pair[0]]}-${pair[1] + 1}" => {
      region          = var.regions[pair[0]]
      id              = "${var.regions[pair[0]]}-${pair[1] + 1}"
      host            = "127.0.0.1"
      listen_host     = "127.0.0.1"
      adapter_port    = var.base_port + 10 + 10 * pair[0] + 3 * pair[1]
      metrics_port    = var.base_port + 11 + 10 * pair[0] + 3 * pair[1]
      federation_port = var.base_port + 12 + 10 * pair[0] + 3 * pair[1]
    }
  }
}

provider "nexus" {
  control_plane  = local.cp_url
  admin_key_file = "${local.dir}/cp/admin.key"
}

# ---- control plane ----

# Created first and destroyed last: its destroy removes the processes' state and logs.
resource "terraform_data" "work_dir" {
  input = { script = local.script, dir = local.dir }

  provisioner "local-exec" {
    command = "mkdir -p ${self.input.dir}"
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.script} clean ${self.input.dir}"
  }
}

module "control_plane" {
  source = "../../modules/control-plane"

  hosts     = [{ name = "local", host = "127.0.0.1", listen_host = "127.0.0.1" }]
  port      = var.base_port
  dns_port  = var.base_port + 1
  lease_ttl = "3s"
  data_dir  = "${local.dir}/cp"
  binary    = var.nexus_bin
}

resource "terraform_data" "control_plane" {
  input = {
    script = local.script
    dir    = local.dir
    start  = "${local.script} start control-plane ${local.dir} 127.0.0.1:${var.base_port} -- ${module.control_plane.instances["local"].command}"
  }

  provisioner "local-exec" {
    command = self.input.start
    # The bootstrap admin key the provider reads is written just after the port opens.
    environment = { READY_FILE = module.control_plane.admin_key_file }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.script} stop control-plane ${self.input.dir}"
  }

  depends_on = [terraform_data.work_dir]
}

# ---- certificates, regions, gateways ----

resource "nexus_ca" "cluster" {
  common_name = "Nexus local example CA"
}

resource "nexus_gateway_certificate" "gw" {
  for_each    = local.gateways
  ca_cert_pem = nexus_ca.cluster.cert_pem
  ca_key_pem  = nexus_ca.cluster.key_pem
  region      = each.value.region
  gateway_id  = each.value.id
  hosts       = ["127.0.0.1"]
}

resource "nexus_region" "r" {
  for_each   = toset(var.regions)
  name       = each.key
  depends_on = [terraform_data.control_plane]
}

module "region" {
  source   = "../../modules/region"
  for_each = toset(var.regions)

  region            = each.key
  control_plane_url = local.cp_url
  gateways          = [for g in local.gateways : g if g.region == each.key]
  ca_cert_pem       = nexus_ca.cluster.cert_pem
  certificates = {
    for id, g in local.gateways : id => {
      cert_pem = nexus_gateway_certificate.gw[id].cert_pem
      key_pem  = nexus_gateway_certificate.gw[id].key_pem
    } if g.region == each.key
  }
  binary     = var.nexus_bin
  config_dir = "${local.dir}/etc"
  state_dir  = "${local.dir}/state"
  extra_args = ["--shutdown-grace-ms", "500"]
}

resource "terraform_data" "gateway" {
  for_each = local.gateways

  input = {
    script = local.script
    dir    = local.dir
    name   = "gateway-${each.key}"
    start  = "${local.script} start gateway-${each.key} ${local.dir} 127.0.0.1:${each.value.adapter_port} -- ${module.region[each.value.region].gateways[each.key].command}"
  }

  provisioner "local-exec" {
    command = self.input.start
    environment = merge([
      for i, path in keys(module.region[each.value.region].files[each.key]) : {
        "WRITE_PATH_${i}"    = path
        "WRITE_CONTENT_${i}" = module.region[each.value.region].files[each.key][path].content
        "WRITE_MODE_${i}"    = module.region[each.value.region].files[each.key][path].mode
      }
    ]...)
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.script} stop ${self.input.name} ${self.input.dir}"
  }

  depends_on = [nexus_region.r]
}

# ---- what the regions serve ----

resource "nexus_route" "demo" {
  name        = "demo"
  subjects    = ["demo.>"]
  policy      = "broadcast"
  consistency = "best_effort"
  description = "every region gets demo.* messages (terraform/examples/local)"
  depends_on  = [nexus_region.r]
}

resource "nexus_route" "orders" {
  name          = "orders"
  subjects      = ["orders.>"]
  policy        = "pinned"
  pinned_region = var.regions[0]
  failover      = slice(var.regions, 1, length(var.regions))
  consistency   = "async"
  depends_on    = [nexus_region.r]
}

resource "nexus_schema" "order_created" {
  subject       = "orders.created"
  compatibility = "BACKWARD"
  enforcement   = "reject"
  definition = jsonencode({
    type       = "object"
    properties = { id = { type = "string" }, amount = { type = "number" } }
    required   = ["id"]
  })
  depends_on = [terraform_data.control_plane]
}

resource "nexus_api_key" "app" {
  name         = "example-app"
  publish      = ["demo.>", "orders.>"]
  subscribe    = ["demo.>", "orders.>"]
  msgs_per_sec = 1000
  depends_on   = [terraform_data.control_plane]
}

data "nexus_gateways" "all" {
  depends_on = [terraform_data.gateway]
}
