# The Nexus control plane over an etcd cluster, independent of any cloud: renders each
# instance's command line, systemd unit and cloud-init, the DNS delegation to publish and the
# firewall rules. It creates nothing itself.

terraform {
  required_version = ">= 1.5"
}

locals {
  tls       = var.cert_pem != ""
  scheme    = local.tls ? "https" : "http"
  ca_file   = "${var.config_dir}/ca.pem"
  cert_file = "${var.config_dir}/control-plane.pem"
  key_file  = "${var.config_dir}/control-plane-key.pem"

  args = {
    for h in var.hosts : h.name => concat(
      ["control-plane", "--listen", "${h.listen_host}:${var.port}"],
      length(var.etcd_endpoints) > 0 ? flatten([for e in var.etcd_endpoints : ["--etcd", e]]) : ["--data-dir", var.data_dir],
      var.etcd_ca_file != "" ? ["--etcd-ca", var.etcd_ca_file] : [],
      var.dns_port > 0 ? ["--dns-listen", "${h.listen_host}:${var.dns_port}", "--dns-zone", var.dns_zone] : [],
      ["--lease-ttl", var.lease_ttl, "--admin-auth", var.admin_auth, "--admin-key-file", "${var.data_dir}/admin.key"],
      local.tls ? ["--tls-cert", local.cert_file, "--tls-key", local.key_file] : [],
      var.ca_cert_pem != "" ? ["--tls-client-ca", local.ca_file] : [],
      var.extra_args,
    )
  }

  command = {
    for name, a in local.args : name => join(" ", concat([var.binary], [for x in a : can(regex("^[A-Za-z0-9_./:@=,+-]+$", x)) ? x : "'${replace(x, "'", "'\\''")}'"]))
  }

  units = {
    for name, a in local.args : name => <<-UNIT
      [Unit]
      Description=Nexus control plane ${name}
      Wants=network-online.target
      After=network-online.target

      [Service]
      Type=simple
      ExecStart=${local.command[name]}
      Restart=on-failure
      RestartSec=2s
      DynamicUser=yes
      StateDirectory=nexus/control-plane
      ProtectSystem=strict
      ProtectHome=yes
      PrivateTmp=yes
      NoNewPrivileges=yes
      %{if var.dns_port > 0 && var.dns_port < 1024~}
      AmbientCapabilities=CAP_NET_BIND_SERVICE
      %{endif~}
      Environment=RUST_LOG=info

      [Install]
      WantedBy=multi-user.target
      UNIT
  }

  files = merge(
    var.ca_cert_pem != "" ? { (local.ca_file) = { content = var.ca_cert_pem, mode = "0644" } } : {},
    local.tls ? {
      (local.cert_file) = { content = var.cert_pem, mode = "0644" }
      (local.key_file)  = { content = var.key_pem, mode = "0600" }
    } : {},
  )

  cloud_init = {
    for name, a in local.args : name => join("\n", [
      "#cloud-config",
      yamlencode({
        write_files = concat(
          [for path, f in local.files : { path = path, content = f.content, permissions = f.mode }],
          [{ path = "/etc/systemd/system/nexus-control-plane.service", content = local.units[name], permissions = "0644" }],
        )
        runcmd = [
          ["systemctl", "daemon-reload"],
          ["systemctl", "enable", "--now", "nexus-control-plane.service"],
        ]
      }),
    ])
  }
}
