"""Units and format versions, defined once for the whole package."""

#: Joules in one kilowatt-hour.
J_PER_KWH = 3.6e6
#: The `run.json` and `state_dict` schema this version writes and reads.
SCHEMA_VERSION = 1

#: The largest grid carbon intensity accepted, in kg CO2e/kWh. The dirtiest national grids average about 1.1 (coal
#: and lignite alone: 0.8 to 1.2, IPCC AR5 WG3 Annex III, https://www.ipcc.ch/report/ar5/wg3/ ; country averages:
#: https://ourworldindata.org/grapher/carbon-intensity-electricity); a figure above this is almost surely g/kWh.
MAX_KG_PER_KWH = 2.0
#: The largest PUE accepted. Surveyed datacentres average 1.5 to 1.6 and the least efficient report about 2.5
#: (Uptime Institute global surveys:
#: https://intelligence.uptimeinstitute.com/resource/uptime-institute-global-data-center-survey-2025 ); above this a
#: PUE is more likely a percentage or a typo.
MAX_PUE = 3.0
#: The largest average power per chip accepted, in W: the densest accelerator module, an NVIDIA GB200 superchip (a
#: CPU and two GPUs on one board), is rated 2.7 kW (https://www.nvidia.com/en-us/data-center/gb200-nvl72/).
MAX_W_PER_CHIP = 3000.0
