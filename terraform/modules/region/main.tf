# One region of Nexus gateways, independent of any cloud: renders what a cloud module needs
# to run them (command line, TOML config file, systemd unit, cloud-init), the DNS SRV records
# to publish and the firewall rules to open. It creates nothing itself.

terraform {
  required_version = ">= 1.5"
}

locals {
  tls = var.ca_cert_pem != ""
  dir = "${var.config_dir}/${var.region}"

  gateways = {
    for g in var.gateways : g.id => merge(g, {
      cert_file = "${local.dir}/${g.id}.pem"
      key_file  = "${local.dir}/${g.id}-key.pem"
      ca_file   = "${local.dir}/ca.pem"
      state_dir = "${var.state_dir}/${g.id}"
      has_cert  = contains(nonsensitive(keys(var.certificates)), g.id)
    })
  }

  args = {
    for id, g in local.gateways : id => concat(
      [
        "gateway",
        "--region", var.region,
        "--gateway-id", id,
        "--listen", "${g.listen_host}:${g.adapter_port}",
        "--advertise", "${g.host}:${g.adapter_port}",
        "--metrics-listen", "${g.listen_host}:${g.metrics_port}",
        "--control-plane", var.control_plane_url,
        "--state-dir", g.state_dir,
        "--auth", var.auth,
      ],
      local.tls && g.has_cert ? [
        "--federation-listen", "${g.listen_host}:${g.federation_port}",
        "--federation-cert", g.cert_file,
        "--federation-key", g.key_file,
        "--federation-ca", g.ca_file,
      ] : [],
      # Adapters over TLS when the gateway has a certificate, unless it only listens on loopback.
      local.tls && g.has_cert && !startswith(g.listen_host, "127.") ? [
        "--tls-cert", g.cert_file,
        "--tls-key", g.key_file,
      ] : [],
      var.insecure ? ["--insecure"] : [],
      startswith(var.control_plane_url, "https://") ? [
        "--control-plane-ca", var.control_plane_ca_file != "" ? var.control_plane_ca_file : g.ca_file,
        "--control-plane-cert", g.cert_file,
        "--control-plane-key", g.key_file,
      ] : [],
      var.extra_args,
    )
  }

  # A shell-quoted command line per gateway.
  command = {
    for id, a in local.args : id => join(" ", concat([var.binary], [for x in a : can(regex("^[A-Za-z0-9_./:@=,+-]+$", x)) ? x : "'${replace(x, "'", "'\\''")}'"]))
  }

  # The same settings as one TOML file per gateway (`nexus gateway --config FILE`; check it
  # with `nexus config check FILE`). `extra_args` has no place in it: flags given beside
  # `--config` override the file.
  config_path = { for id, g in local.gateways : id => "${local.dir}/${id}.toml" }
  config = {
    for id, g in local.gateways : id => join("\n", compact([
      "# nexus gateway ${id} (region ${var.region}), rendered by terraform/modules/region",
      "[gateway]",
      "region = ${jsonencode(var.region)}",
      "gateway_id = ${jsonencode(id)}",
      "listen = ${jsonencode("${g.listen_host}:${g.adapter_port}")}",
      "advertise = ${jsonencode("${g.host}:${g.adapter_port}")}",
      "metrics_listen = ${jsonencode("${g.listen_host}:${g.metrics_port}")}",
      "control_plane = ${jsonencode(var.control_plane_url)}",
      "state_dir = ${jsonencode(g.state_dir)}",
      "auth = ${jsonencode(var.auth)}",
      var.insecure ? "insecure = true" : "",
      local.tls && g.has_cert && !startswith(g.listen_host, "127.") ? "\n[gateway.tls]\ncert = ${jsonencode(g.cert_file)}\nkey = ${jsonencode(g.key_file)}" : "",
      startswith(var.control_plane_url, "https://") ? "\n[gateway.control_plane_tls]\nca = ${jsonencode(var.control_plane_ca_file != "" ? var.control_plane_ca_file : g.ca_file)}\ncert = ${jsonencode(g.cert_file)}\nkey = ${jsonencode(g.key_file)}" : "",
      local.tls && g.has_cert ? "\n[federation]\nlisten = ${jsonencode("${g.listen_host}:${g.federation_port}")}\ncert = ${jsonencode(g.cert_file)}\nkey = ${jsonencode(g.key_file)}\nca = ${jsonencode(g.ca_file)}" : "",
    ]))
  }

  units = {
    for id, g in local.gateways : id => <<-UNIT
      [Unit]
      Description=Nexus gateway ${id} (region ${var.region})
      Wants=network-online.target
      After=network-online.target

      [Service]
      Type=simple
      ExecStart=${local.command[id]}
      Restart=on-failure
      RestartSec=2s
      # Draining: adapters move away within the shutdown grace after SIGTERM.
      KillSignal=SIGTERM
      TimeoutStopSec=30s
      DynamicUser=yes
      StateDirectory=nexus/${id}
      ConfigurationDirectory=nexus/${var.region}
      ProtectSystem=strict
      ProtectHome=yes
      PrivateTmp=yes
      NoNewPrivileges=yes
      LimitNOFILE=1048576
      Environment=RUST_LOG=info

      [Install]
      WantedBy=multi-user.target
      UNIT
  }

  files = {
    for id, g in local.gateways : id => merge(
      { (local.config_path[id]) = { content = "${local.config[id]}\n", mode = "0644" } },
      local.tls && g.has_cert ? {
        (g.ca_file)   = { content = var.ca_cert_pem, mode = "0644" }
        (g.cert_file) = { content = var.certificates[id].cert_pem, mode = "0644" }
        (g.key_file)  = { content = var.certificates[id].key_pem, mode = "0600" }
      } : {},
    )
  }

  cloud_init = {
    for id, g in local.gateways : id => join("\n", [
      "#cloud-config",
      yamlencode({
        write_files = concat(
          [for path, f in local.files[id] : { path = path, content = f.content, permissions = f.mode }],
          [{ path = "/etc/systemd/system/nexus-gateway-${id}.service", content = local.units[id], permissions = "0644" }],
        )
        runcmd = [
          ["systemctl", "daemon-reload"],
          ["systemctl", "enable", "--now", "nexus-gateway-${id}.service"],
        ]
      }),
    ])
  }
}
